package gitlab

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/go-retryablehttp"
	gl "gitlab.com/gitlab-org/api/client-go"

	"gltoken.dev/gltoken/internal/exchange"
	"gltoken.dev/gltoken/internal/ledger"
)

// ManagedNamePrefix starts the name of every token gltoken mints
// ("gltoken-" + ledger id). GitLab keeps a token's name when it is rotated,
// so a successor made by self-rotation carries its ledger id too.
const ManagedNamePrefix = "gltoken-"

// ErrRevokeUnconfirmed is exchange.ErrRevokeUnconfirmed: GitLab answered 404
// to a revoke (or a family listing) and the owner is not visible to the
// service account either (moved, membership removed), so the token may still
// work until its own expiry date. Errors wrapping it also wrap
// exchange.ErrNotFound.
var ErrRevokeUnconfirmed = exchange.ErrRevokeUnconfirmed

// AccessToken is one project or group access token as GitLab lists it.
type AccessToken struct {
	ID        int64
	Name      string
	UserID    int64 // the token's bot user
	Active    bool
	ExpiresAt time.Time // 00:00 of the expiry date (UTC as GitLab shows it); zero if none
}

// projectTokenList is GET /projects/:id/access_tokens's query.
type projectTokenList struct {
	gl.ListOptions
	State  *string `url:"state,omitempty"`
	Search *string `url:"search,omitempty"`
}

// ListManagedAccessTokens lists the active access tokens gltoken minted on
// the project or group with GitLab id owner (those named
// ManagedNamePrefix…), every page. It asks GitLab to
// filter by state (17.2+; older versions ignore it) and, for groups, by name,
// and filters again here.
func (c *Client) ListManagedAccessTokens(ctx context.Context, kind ledger.Kind, owner int64) ([]AccessToken, error) {
	all, err := c.listAccessTokens(ctx, kind, owner, ManagedNamePrefix)
	if err != nil {
		return nil, err
	}
	out := all[:0]
	for _, t := range all {
		if strings.HasPrefix(t.Name, ManagedNamePrefix) {
			out = append(out, t)
		}
	}
	return out, nil
}

// ListManaged implements exchange.ManagedLister for access tokens (deploy
// tokens cannot rotate themselves: none to list).
func (c *Client) ListManaged(ctx context.Context, kind ledger.Kind, owner int64) ([]exchange.ManagedToken, error) {
	if !kind.AccessToken() {
		return nil, nil
	}
	toks, err := c.ListManagedAccessTokens(ctx, kind, owner)
	if err != nil {
		return nil, err
	}
	out := make([]exchange.ManagedToken, len(toks))
	for i, t := range toks {
		out[i] = exchange.ManagedToken{GitLabID: t.ID, Name: t.Name}
	}
	return out, nil
}

// listAccessTokens lists the active access tokens on owner whose name
// contains search ("" for all).
func (c *Client) listAccessTokens(ctx context.Context, kind ledger.Kind, owner int64, search string) ([]AccessToken, error) {
	if !kind.AccessToken() {
		return nil, fmt.Errorf("list access tokens: %w: %s is not an access token kind", exchange.ErrRejected, kind)
	}
	if owner <= 0 {
		return nil, fmt.Errorf("list %ss: %w: no owner id", kindName(kind), exchange.ErrRejected)
	}
	who := ownerName(owner, "")
	op := fmt.Sprintf("list %ss on %s", kindName(kind), who)
	var out []AccessToken
	add := func(t *gl.PersonalAccessToken) {
		if t == nil || !t.Active || t.Revoked || !strings.Contains(t.Name, search) {
			return
		}
		a := AccessToken{ID: t.ID, Name: t.Name, UserID: t.UserID, Active: true}
		if t.ExpiresAt != nil {
			a.ExpiresAt = time.Time(*t.ExpiresAt)
		}
		out = append(out, a)
	}
	page := int64(1)
	for n := 0; ; n++ {
		if n >= maxListPages {
			return nil, fmt.Errorf("%s: more than %d pages of tokens", op, maxListPages)
		}
		lo := gl.ListOptions{PerPage: 100, Page: page}
		state := "active"
		var (
			resp *gl.Response
			err  error
		)
		if kind == ledger.ProjectAccessToken {
			// client-go has no search option for project tokens: the
			// request is built here (GitLab ignores search before 17.x, and
			// the names are filtered here again).
			opts := projectTokenList{ListOptions: lo, State: &state}
			if search != "" {
				opts.Search = &search
			}
			var req *retryablehttp.Request
			req, err = c.gl.NewRequest(http.MethodGet, "projects/"+strconv.FormatInt(owner, 10)+"/access_tokens", &opts,
				reqOpts(ctx, http.MethodGet, routeProjectAccessTokens))
			if err == nil {
				var ts []*gl.ProjectAccessToken
				resp, err = c.gl.Do(req, &ts)
				for _, t := range ts {
					add(&t.PersonalAccessToken)
				}
			}
		} else {
			st := gl.AccessTokenState(state)
			opts := &gl.ListGroupAccessTokensOptions{ListOptions: lo, State: &st}
			if search != "" {
				opts.Search = &search
			}
			var ts []*gl.GroupAccessToken
			ts, resp, err = c.gl.GroupAccessTokens.ListGroupAccessTokens(owner, opts, reqOpts(ctx, http.MethodGet, routeGroupAccessTokens)...)
			for _, t := range ts {
				add(&t.PersonalAccessToken)
			}
		}
		if err != nil {
			if status(resp) == http.StatusNotFound {
				return nil, c.unconfirmed(ctx, op, kind, owner)
			}
			return nil, c.mapError(op, roleNeeded(kind, who), resp, err, false)
		}
		if resp == nil || resp.NextPage == 0 || resp.NextPage <= page {
			return out, nil
		}
		page = resp.NextPage
	}
}

// RevokeFamily ends ref and every active token of its family: for an access
// token, every active access token on the same owner named ref.Name (a
// self-rotation's successor has a new id and the same name and bot user;
// GitLab lists by name, so a token of the same bot under another name, which
// GitLab gives no way to make, is not looked for). Deploy tokens cannot be rotated; for them it is Revoke.
// It reports how many tokens other than ref.GitLabID it revoked (successors
// that escaped the ledger). An already revoked ref is not an error.
func (c *Client) RevokeFamily(ctx context.Context, ref exchange.TokenRef) (int, error) {
	ctx = revoking(ctx)
	name := ref.Name
	if !ref.Kind.AccessToken() {
		return 0, c.Revoke(ctx, ref)
	}
	owner := ref.Owner
	if owner <= 0 || ref.GitLabID <= 0 || !strings.HasPrefix(name, ManagedNamePrefix) {
		return 0, fmt.Errorf("revoke %s family: %w: no owner id, token id or name", kindName(ref.Kind), exchange.ErrRejected)
	}
	// One listing (filtered by name on GitLab's side) shows every live
	// member; the common case (no rotation) costs it and the revoke.
	active, err := c.listAccessTokens(ctx, ref.Kind, owner, name)
	if err != nil {
		return 0, fmt.Errorf("revoke family of %s %d: %w", kindName(ref.Kind), ref.GitLabID, err)
	}
	others := 0
	var errs []error
	for _, t := range active {
		if t.ID != ref.GitLabID && t.Name != name {
			continue
		}
		if err := c.Revoke(ctx, exchange.TokenRef{Kind: ref.Kind, Owner: owner, GitLabID: t.ID, Name: t.Name}); err != nil {
			errs = append(errs, err)
			continue
		}
		if t.ID != ref.GitLabID {
			others++
			c.log.WarnContext(ctx, "gitlab token of a credential's family revoked: it had rotated itself out of the ledger",
				"kind", string(ref.Kind), "owner_id", owner, "gitlab_id", t.ID, "rotated_from", ref.GitLabID, "name", t.Name)
		}
	}
	return others, errors.Join(errs...)
}

// unconfirmed is what a 404 on owner's token becomes: nil error is never
// returned. When the owner itself is visible the token is gone and the caller
// learns it from confirmGone; here the owner answered 404 too (or could not
// be asked), so the error wraps ErrRevokeUnconfirmed.
func (c *Client) unconfirmed(ctx context.Context, op string, kind ledger.Kind, owner int64) error {
	visible, err := c.ownerVisible(ctx, kind, owner)
	switch {
	case err != nil:
		return fmt.Errorf("%s: GitLab answered 404, and the owner could not be checked: %w", op, err)
	case visible:
		return fmt.Errorf("%s: %w: GitLab answered 404 although the owner is visible", op, exchange.ErrRejected)
	}
	return fmt.Errorf("%s: %w: %w", op, ErrRevokeUnconfirmed, exchange.ErrNotFound)
}

// confirmGone settles a 404 on a token: when the owner is visible to the
// service account, the token is gone (nil); otherwise the error wraps
// ErrRevokeUnconfirmed (or says why the owner could not be checked).
func (c *Client) confirmGone(ctx context.Context, op string, kind ledger.Kind, owner int64) error {
	visible, err := c.ownerVisible(ctx, kind, owner)
	switch {
	case err != nil:
		return fmt.Errorf("%s: GitLab answered 404, and the owner could not be checked: %w", op, err)
	case visible:
		return nil
	}
	return fmt.Errorf("%s: %w: %w", op, ErrRevokeUnconfirmed, exchange.ErrNotFound)
}

// ownerVisible asks GitLab (uncached) whether the project or group is
// visible to the service account: false on 404.
func (c *Client) ownerVisible(ctx context.Context, kind ledger.Kind, owner int64) (bool, error) {
	var (
		resp *gl.Response
		err  error
	)
	switch kind {
	case ledger.ProjectDeployToken, ledger.ProjectAccessToken:
		_, resp, err = c.gl.Projects.GetProject(owner, nil, reqOpts(ctx, http.MethodGet, routeProject)...)
	default:
		_, resp, err = c.gl.Groups.GetGroup(owner, nil, reqOpts(ctx, http.MethodGet, routeGroup)...)
	}
	switch {
	case err == nil:
		return true, nil
	case status(resp) == http.StatusNotFound:
		return false, nil
	}
	return false, c.mapError("look up owner "+ownerName(owner, ""), "", resp, err, false)
}

var (
	_ exchange.FamilyRevoker = (*Client)(nil)
	_ exchange.ManagedLister = (*Client)(nil)
)
