package gitlab

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	gl "gitlab.com/gitlab-org/api/client-go"

	"gltoken.dev/gltoken/internal/exchange"
	"gltoken.dev/gltoken/internal/fingerprint"
	"gltoken.dev/gltoken/internal/ledger"
)

// Route templates, for OnResponse (never an id or a secret).
const (
	routeProjectDeployTokens = "/projects/:id/deploy_tokens"
	routeProjectDeployToken  = "/projects/:id/deploy_tokens/:token_id"
	routeGroupDeployTokens   = "/groups/:id/deploy_tokens"
	routeGroupDeployToken    = "/groups/:id/deploy_tokens/:token_id"
	routeProjectAccessTokens = "/projects/:id/access_tokens"
	routeProjectAccessToken  = "/projects/:id/access_tokens/:token_id"
	routeGroupAccessTokens   = "/groups/:id/access_tokens"
	routeGroupAccessToken    = "/groups/:id/access_tokens/:token_id"
	routeUser                = "/users/:id"
	routeProject             = "/projects/:id"
	routeGroup               = "/groups/:id"
)

// maxListPages bounds the pagination of FindByName (100 tokens a page).
const maxListPages = 200

// AccessTokenExpiryDate is the expires_at date sent for a project or group
// access token that must stop working at exp. GitLab makes such a token
// invalid from the start of its expires_at date in the server's time zone
// (UTC on gitlab.com; GitLab MR 93504), which may be up to 14 hours ahead of
// UTC, so this is the day after the first UTC date whose midnight is strictly
// after exp: never before exp anywhere, at most about two days after it. The
// ledger revokes at exp; the date is only the backstop.
func AccessTokenExpiryDate(exp time.Time) time.Time {
	u := exp.UTC()
	return time.Date(u.Year(), u.Month(), u.Day(), 0, 0, 0, 0, time.UTC).AddDate(0, 0, 2)
}

// validAccessLevels are GitLab's roles an access token may get.
var validAccessLevels = map[int]bool{10: true, 15: true, 20: true, 30: true, 40: true, 50: true}

// Mint creates the credential req describes. It never retries the create:
// when GitLab's answer is lost or ambiguous (timeout, dropped connection, 5xx,
// unreadable 2xx) the error wraps exchange.ErrAmbiguous and the caller
// reconciles with FindByName.
func (c *Client) Mint(ctx context.Context, req exchange.MintRequest) (exchange.Credential, error) {
	if err := c.validate(req); err != nil {
		return exchange.Credential{}, err
	}
	if err := ctx.Err(); err != nil {
		// Nothing was sent: not ambiguous.
		return exchange.Credential{}, fmt.Errorf("mint %s %q: %w: %w", kindName(req.Kind), req.Name, exchange.ErrUnavailable, err)
	}

	cred := exchange.Credential{
		Kind:      req.Kind,
		Owner:     req.Owner,
		OwnerPath: req.OwnerPath,
		Name:      req.Name,
	}
	var err error
	switch req.Kind {
	case ledger.ProjectDeployToken, ledger.GroupDeployToken:
		err = c.mintDeployToken(ctx, req, &cred)
	default:
		err = c.mintAccessToken(ctx, req, &cred)
	}
	if err != nil {
		return exchange.Credential{}, err
	}
	c.log.DebugContext(ctx, "gitlab token minted",
		"kind", string(req.Kind), "owner", req.OwnerPath, "owner_id", req.Owner,
		"name", req.Name, "gitlab_id", cred.GitLabID, "username", cred.Username,
		"expires_at", cred.ExpiresAt, "secret_sha256", fingerprint.Of(cred.Secret))
	return cred, nil
}

func (c *Client) validate(req exchange.MintRequest) error {
	op := fmt.Sprintf("mint %s %q", kindName(req.Kind), req.Name)
	switch {
	case !req.Kind.Valid():
		return fmt.Errorf("mint: %w: unknown credential kind %q", exchange.ErrRejected, req.Kind)
	case strings.TrimSpace(req.Name) == "":
		return fmt.Errorf("%s: %w: empty token name", op, exchange.ErrRejected)
	case req.Owner <= 0:
		return fmt.Errorf("%s: %w: no owner id", op, exchange.ErrRejected)
	case len(req.Scopes) == 0:
		return fmt.Errorf("%s: %w: no scopes", op, exchange.ErrRejected)
	case req.ExpiresAt.IsZero():
		// GitLab would make a deploy token that never expires.
		return fmt.Errorf("%s: %w: no expiry", op, exchange.ErrRejected)
	case !req.ExpiresAt.After(c.now()):
		return fmt.Errorf("%s: %w: expiry %s is not in the future", op, exchange.ErrRejected, req.ExpiresAt.UTC().Format(time.RFC3339))
	}
	if slices.Contains(req.Scopes, "self_rotate") {
		// A token that may rotate itself makes successors the ledger never
		// sees: gltoken never asks for one.
		return fmt.Errorf("%s: %w: the self_rotate scope is never requested", op, exchange.ErrRejected)
	}
	if req.Kind.AccessToken() && !validAccessLevels[req.AccessLevel] {
		// 0 would get GitLab's default, Maintainer: never by accident.
		return fmt.Errorf("%s: %w: access level %d is not one of 10, 15, 20, 30, 40, 50", op, exchange.ErrRejected, req.AccessLevel)
	}
	return nil
}

func (c *Client) mintDeployToken(ctx context.Context, req exchange.MintRequest, cred *exchange.Credential) error {
	// Exact to the second, RFC 3339 UTC; no username, so GitLab picks
	// gitlab+deploy-token-{id}.
	exp := req.ExpiresAt.UTC().Truncate(time.Second)
	scopes := append([]string(nil), req.Scopes...)
	name := req.Name
	op := fmt.Sprintf("create %s %q on %s", kindName(req.Kind), req.Name, ownerName(req.Owner, req.OwnerPath))

	var (
		tok  *gl.DeployToken
		resp *gl.Response
		err  error
	)
	if req.Kind == ledger.ProjectDeployToken {
		tok, resp, err = c.gl.DeployTokens.CreateProjectDeployToken(req.Owner,
			&gl.CreateProjectDeployTokenOptions{Name: &name, ExpiresAt: &exp, Scopes: &scopes},
			reqOpts(ctx, http.MethodPost, routeProjectDeployTokens)...)
	} else {
		tok, resp, err = c.gl.DeployTokens.CreateGroupDeployToken(req.Owner,
			&gl.CreateGroupDeployTokenOptions{Name: &name, ExpiresAt: &exp, Scopes: &scopes},
			reqOpts(ctx, http.MethodPost, routeGroupDeployTokens)...)
	}
	if err != nil {
		return c.mapCreateError(op, req, resp, err)
	}
	if tok == nil || tok.Token == "" || tok.ID == 0 {
		return fmt.Errorf("%s: %w: GitLab answered %d without a token", op, exchange.ErrAmbiguous, status(resp))
	}
	cred.GitLabID = tok.ID
	cred.Username = tok.Username
	cred.Secret = tok.Token
	cred.ExpiresAt = exp
	if tok.ExpiresAt != nil && !tok.ExpiresAt.IsZero() {
		cred.ExpiresAt = tok.ExpiresAt.UTC()
	}
	if cred.Username == "" {
		// GitLab's default; git must send exactly the token's username.
		cred.Username = "gitlab+deploy-token-" + strconv.FormatInt(tok.ID, 10)
	}
	return nil
}

func (c *Client) mintAccessToken(ctx context.Context, req exchange.MintRequest, cred *exchange.Credential) error {
	date := gl.ISOTime(AccessTokenExpiryDate(req.ExpiresAt))
	scopes := append([]string(nil), req.Scopes...)
	name := req.Name
	level := gl.AccessLevelValue(req.AccessLevel)
	op := fmt.Sprintf("create %s %q on %s", kindName(req.Kind), req.Name, ownerName(req.Owner, req.OwnerPath))

	var (
		tok  *gl.PersonalAccessToken
		resp *gl.Response
		err  error
	)
	if req.Kind == ledger.ProjectAccessToken {
		var t *gl.ProjectAccessToken
		t, resp, err = c.gl.ProjectAccessTokens.CreateProjectAccessToken(req.Owner,
			&gl.CreateProjectAccessTokenOptions{Name: &name, Scopes: &scopes, AccessLevel: &level, ExpiresAt: &date},
			reqOpts(ctx, http.MethodPost, routeProjectAccessTokens)...)
		if t != nil {
			tok = &t.PersonalAccessToken
		}
	} else {
		var t *gl.GroupAccessToken
		t, resp, err = c.gl.GroupAccessTokens.CreateGroupAccessToken(req.Owner,
			&gl.CreateGroupAccessTokenOptions{Name: &name, Scopes: &scopes, AccessLevel: &level, ExpiresAt: &date},
			reqOpts(ctx, http.MethodPost, routeGroupAccessTokens)...)
		if t != nil {
			tok = &t.PersonalAccessToken
		}
	}
	if err != nil {
		return c.mapCreateError(op, req, resp, err)
	}
	if tok == nil || tok.Token == "" || tok.ID == 0 {
		return fmt.Errorf("%s: %w: GitLab answered %d without a token", op, exchange.ErrAmbiguous, status(resp))
	}
	cred.GitLabID = tok.ID
	cred.Secret = tok.Token
	// The real TTL: the ledger revokes then; GitLab's date is only the backstop.
	cred.ExpiresAt = req.ExpiresAt
	cred.Username = c.botUsername(ctx, tok.UserID, req.Name)
	return nil
}

// botUsername looks up the access token's bot user. git accepts any non-blank
// username with an access token, so when the lookup fails the token's name
// stands in rather than failing a mint that succeeded.
func (c *Client) botUsername(ctx context.Context, userID int64, fallback string) string {
	if userID == 0 {
		return fallback
	}
	u, _, err := c.gl.Users.GetUser(userID, gl.GetUsersOptions{}, reqOpts(ctx, http.MethodGet, routeUser)...)
	if err != nil || u == nil || strings.TrimSpace(u.Username) == "" {
		c.log.WarnContext(ctx, "gitlab bot user lookup failed; using the token name as git username",
			"user_id", userID, "error", errString(err))
		return fallback
	}
	return u.Username
}

func errString(err error) string {
	if err == nil {
		return "empty username"
	}
	return err.Error()
}

// mapCreateError maps a failed create; a 2xx whose body could not be read
// means the token exists but its secret is lost: ambiguous.
func (c *Client) mapCreateError(op string, req exchange.MintRequest, resp *gl.Response, err error) error {
	if code := status(resp); code >= 200 && code < 300 {
		return fmt.Errorf("%s: %w: GitLab answered %d but the response was unreadable: %v", op, exchange.ErrAmbiguous, code, err)
	}
	return c.mapError(op, roleNeeded(req.Kind, ownerName(req.Owner, req.OwnerPath)), resp, err, true)
}

// FindByName looks for an active token of that kind named name on the
// project or group with GitLab id owner. It pages through the owner's
// tokens. When several match (which gltoken never causes), the newest is
// returned.
func (c *Client) FindByName(ctx context.Context, kind ledger.Kind, owner int64, name string) (exchange.TokenRef, bool, error) {
	if !kind.Valid() {
		return exchange.TokenRef{}, false, fmt.Errorf("find token: %w: unknown credential kind %q", exchange.ErrRejected, kind)
	}
	if owner <= 0 || name == "" {
		return exchange.TokenRef{}, false, fmt.Errorf("find %s: %w: no owner id or name", kindName(kind), exchange.ErrRejected)
	}
	who := ownerName(owner, "")
	op := fmt.Sprintf("find %s %q on %s", kindName(kind), name, who)
	var (
		best    int64
		matches int
	)
	// A deploy token past its expires_at counts: GitLab no longer accepts
	// it, but it is still there, and an intent whose create landed after the
	// daemon died is settled by finding (and deleting) it even after its TTL.
	consider := func(id int64, tokName string, active bool) {
		if tokName == name && active {
			matches++
			if id > best {
				best = id
			}
		}
	}
	page := int64(1)
	for n := 0; ; n++ {
		if n >= maxListPages {
			return exchange.TokenRef{}, false, fmt.Errorf("%s: more than %d pages of tokens", op, maxListPages)
		}
		lo := gl.ListOptions{PerPage: 100, Page: page}
		var (
			resp *gl.Response
			err  error
		)
		switch kind {
		case ledger.ProjectDeployToken:
			var ts []*gl.DeployToken
			ts, resp, err = c.gl.DeployTokens.ListProjectDeployTokens(owner, &gl.ListProjectDeployTokensOptions{ListOptions: lo},
				reqOpts(ctx, http.MethodGet, routeProjectDeployTokens)...)
			for _, t := range ts {
				consider(t.ID, t.Name, !t.Revoked)
			}
		case ledger.GroupDeployToken:
			var ts []*gl.DeployToken
			ts, resp, err = c.gl.DeployTokens.ListGroupDeployTokens(owner, &gl.ListGroupDeployTokensOptions{ListOptions: lo},
				reqOpts(ctx, http.MethodGet, routeGroupDeployTokens)...)
			for _, t := range ts {
				consider(t.ID, t.Name, !t.Revoked)
			}
		case ledger.ProjectAccessToken:
			state := "active"
			var ts []*gl.ProjectAccessToken
			ts, resp, err = c.gl.ProjectAccessTokens.ListProjectAccessTokens(owner, &gl.ListProjectAccessTokensOptions{ListOptions: lo, State: &state},
				reqOpts(ctx, http.MethodGet, routeProjectAccessTokens)...)
			for _, t := range ts {
				consider(t.ID, t.Name, t.Active && !t.Revoked)
			}
		case ledger.GroupAccessToken:
			state := gl.AccessTokenStateActive
			var ts []*gl.GroupAccessToken
			ts, resp, err = c.gl.GroupAccessTokens.ListGroupAccessTokens(owner, &gl.ListGroupAccessTokensOptions{ListOptions: lo, State: &state},
				reqOpts(ctx, http.MethodGet, routeGroupAccessTokens)...)
			for _, t := range ts {
				consider(t.ID, t.Name, t.Active && !t.Revoked)
			}
		}
		if err != nil {
			return exchange.TokenRef{}, false, c.mapError(op, roleNeeded(kind, who), resp, err, false)
		}
		if resp == nil || resp.NextPage == 0 || resp.NextPage <= page {
			break
		}
		page = resp.NextPage
	}
	if matches == 0 {
		return exchange.TokenRef{}, false, nil
	}
	if matches > 1 {
		c.log.WarnContext(ctx, "several active gitlab tokens share one name", "kind", string(kind), "owner_id", owner, "name", name, "count", matches)
	}
	return exchange.TokenRef{Kind: kind, Owner: owner, GitLabID: best}, true, nil
}

// Revoke deletes a deploy token or revokes an access token. A token that is
// already gone, or an access token already revoked, is not an error. A 404
// counts as gone only when the owner is still visible to the service account;
// otherwise the error wraps ErrRevokeUnconfirmed.
func (c *Client) Revoke(ctx context.Context, ref exchange.TokenRef) error {
	ctx = revoking(ctx)
	if !ref.Kind.Valid() {
		return fmt.Errorf("revoke token: %w: unknown credential kind %q", exchange.ErrRejected, ref.Kind)
	}
	owner := ref.Owner
	if owner <= 0 || ref.GitLabID <= 0 {
		return fmt.Errorf("revoke %s: %w: no owner id or token id", kindName(ref.Kind), exchange.ErrRejected)
	}
	who := ownerName(owner, "")
	op := fmt.Sprintf("revoke %s %d on %s", kindName(ref.Kind), ref.GitLabID, who)
	var (
		resp *gl.Response
		err  error
	)
	switch ref.Kind {
	case ledger.ProjectDeployToken:
		resp, err = c.gl.DeployTokens.DeleteProjectDeployToken(owner, ref.GitLabID, reqOpts(ctx, http.MethodDelete, routeProjectDeployToken)...)
	case ledger.GroupDeployToken:
		resp, err = c.gl.DeployTokens.DeleteGroupDeployToken(owner, ref.GitLabID, reqOpts(ctx, http.MethodDelete, routeGroupDeployToken)...)
	case ledger.ProjectAccessToken:
		resp, err = c.gl.ProjectAccessTokens.RevokeProjectAccessToken(owner, ref.GitLabID, reqOpts(ctx, http.MethodDelete, routeProjectAccessToken)...)
	case ledger.GroupAccessToken:
		resp, err = c.gl.GroupAccessTokens.RevokeGroupAccessToken(owner, ref.GitLabID, reqOpts(ctx, http.MethodDelete, routeGroupAccessToken)...)
	}
	switch {
	case err == nil:
		c.log.DebugContext(ctx, "gitlab token revoked", "kind", string(ref.Kind), "owner_id", owner, "gitlab_id", ref.GitLabID)
		return nil
	case status(resp) == http.StatusNotFound:
		// GitLab also answers 404 when the owner is no longer visible to the
		// service account, and the token then still works: confirm.
		if cerr := c.confirmGone(ctx, op, ref.Kind, owner); cerr != nil {
			return cerr
		}
		c.log.DebugContext(ctx, "gitlab token already gone", "kind", string(ref.Kind), "owner_id", owner, "gitlab_id", ref.GitLabID)
		return nil
	case status(resp) == http.StatusBadRequest && ref.Kind.AccessToken():
		// GitLab answers 400 when the revoke service fails, e.g. when the
		// token was already revoked and its bot removed: look before failing.
		if gone, gerr := c.accessTokenGone(ctx, ref.Kind, owner, ref.GitLabID); gerr == nil && gone {
			return nil
		}
	}
	return c.mapError(op, roleNeeded(ref.Kind, who), resp, err, false)
}

// accessTokenGone reports whether the access token no longer works (absent,
// revoked or inactive).
func (c *Client) accessTokenGone(ctx context.Context, kind ledger.Kind, owner, id int64) (bool, error) {
	var (
		tok  *gl.PersonalAccessToken
		resp *gl.Response
		err  error
	)
	if kind == ledger.ProjectAccessToken {
		var t *gl.ProjectAccessToken
		t, resp, err = c.gl.ProjectAccessTokens.GetProjectAccessToken(owner, id, reqOpts(ctx, http.MethodGet, routeProjectAccessToken)...)
		if t != nil {
			tok = &t.PersonalAccessToken
		}
	} else {
		var t *gl.GroupAccessToken
		t, resp, err = c.gl.GroupAccessTokens.GetGroupAccessToken(owner, id, reqOpts(ctx, http.MethodGet, routeGroupAccessToken)...)
		if t != nil {
			tok = &t.PersonalAccessToken
		}
	}
	if status(resp) == http.StatusNotFound {
		return true, nil
	}
	if err != nil {
		return false, err
	}
	if tok == nil {
		return false, errors.New("empty answer")
	}
	return tok.Revoked || !tok.Active, nil
}

func kindName(k ledger.Kind) string {
	switch k {
	case ledger.ProjectDeployToken:
		return "project deploy token"
	case ledger.GroupDeployToken:
		return "group deploy token"
	case ledger.ProjectAccessToken:
		return "project access token"
	case ledger.GroupAccessToken:
		return "group access token"
	}
	return "token"
}

// ownerName names the owner in messages: its path when known, else its id.
func ownerName(id int64, path string) string {
	if path != "" {
		return path
	}
	return strconv.FormatInt(id, 10)
}

// roleNeeded names the role GitLab requires, for 403 messages.
func roleNeeded(k ledger.Kind, owner string) string {
	switch k {
	case ledger.ProjectDeployToken, ledger.ProjectAccessToken:
		return "Maintainer (or Owner) on project " + owner
	default:
		return "Owner on group " + owner
	}
}

// resolveOwner asks GitLab for the id of the project (project
// kinds) or group (group kinds) whose canonical full path is exactly path.
// GitLab's API also answers for an old path of a moved or renamed project
// (a redirect route) and ignores case; those answers are refused with
// exchange.ErrNotFound, because the policy allowed path and nothing else.
// It always asks GitLab (one GET a mint): a cached id could belong to a
// project moved since.
func (c *Client) resolveOwner(ctx context.Context, kind ledger.Kind, path string) (int64, error) {
	path = strings.Trim(path, "/")
	if path == "" {
		return 0, fmt.Errorf("resolve owner: %w: empty path", exchange.ErrRejected)
	}
	if !kind.Valid() {
		return 0, fmt.Errorf("resolve owner: %w: unknown credential kind %q", exchange.ErrRejected, kind)
	}
	var (
		id        int64
		canonical string
	)
	switch kind {
	case ledger.ProjectDeployToken, ledger.ProjectAccessToken:
		p, resp, err := c.gl.Projects.GetProject(path, nil, reqOpts(ctx, http.MethodGet, routeProject)...)
		if err != nil {
			return 0, c.mapError("resolve project "+path, "access to project "+path, resp, err, false)
		}
		id, canonical = p.ID, p.PathWithNamespace
	default:
		g, resp, err := c.gl.Groups.GetGroup(path, nil, reqOpts(ctx, http.MethodGet, routeGroup)...)
		if err != nil {
			return 0, c.mapError("resolve group "+path, "access to group "+path, resp, err, false)
		}
		id, canonical = g.ID, g.FullPath
	}
	if canonical != path {
		return 0, fmt.Errorf("resolve %s: %w: GitLab knows it as %q (moved, renamed or differently cased); ask for that path", path, exchange.ErrNotFound, canonical)
	}
	return id, nil
}
