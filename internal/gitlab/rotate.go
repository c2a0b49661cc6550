package gitlab

import (
	"context"
	"fmt"
	"net/http"
	"time"

	gl "gitlab.com/gitlab-org/api/client-go"

	"gltoken.dev/gltoken/internal/exchange"
	"gltoken.dev/gltoken/internal/fingerprint"
	"gltoken.dev/gltoken/internal/ledger"
)

const (
	routeProjectAccessTokenRotate = "/projects/:id/access_tokens/:token_id/rotate"
	routeGroupAccessTokenRotate   = "/groups/:id/access_tokens/:token_id/rotate"
)

// Rotate renews the project or group access token ref with GitLab's rotate
// API (POST /:kind/:id/access_tokens/:token_id/rotate, authenticated by the
// service account, never by the token itself). GitLab revokes ref's secret at
// once and answers 200 with the successor: a new id, the same name, bot user,
// scopes and role, and a new secret; expires_at is a date (the token is
// invalid from its start), at most 365 days ahead (400 with GitLab's
// buffered_token_expiration_limit flag).
//
// A rotate is not idempotent: it is never retried, and when its answer is
// lost (timeout, dropped connection, 5xx, unreadable 2xx) the error wraps
// exchange.ErrAmbiguous; the caller then finds the family's live member by
// name (FindByName) — the secret of a lost answer is gone, but the bot is not.
// Username is left empty: the bot user, and so the git username, is the
// rotated token's. A token already revoked is answered 400 "Token already revoked" (wrapped
// exchange.ErrRejected): only an active token can be rotated.
func (c *Client) Rotate(ctx context.Context, ref exchange.TokenRef, expiresAt time.Time) (exchange.Credential, error) {
	if !ref.Kind.AccessToken() {
		return exchange.Credential{}, fmt.Errorf("rotate: %w: only project and group access tokens can be rotated, not %s", exchange.ErrRejected, kindName(ref.Kind))
	}
	if ref.Owner <= 0 || ref.GitLabID <= 0 {
		return exchange.Credential{}, fmt.Errorf("rotate %s: %w: no owner id or token id", kindName(ref.Kind), exchange.ErrRejected)
	}
	if expiresAt.IsZero() || !expiresAt.After(c.now()) {
		return exchange.Credential{}, fmt.Errorf("rotate %s %d: %w: expiry is not in the future", kindName(ref.Kind), ref.GitLabID, exchange.ErrRejected)
	}
	if err := ctx.Err(); err != nil {
		return exchange.Credential{}, fmt.Errorf("rotate %s %d: %w: %w", kindName(ref.Kind), ref.GitLabID, exchange.ErrUnavailable, err)
	}
	date := gl.ISOTime(AccessTokenExpiryDate(expiresAt))
	op := fmt.Sprintf("rotate %s %d on %s", kindName(ref.Kind), ref.GitLabID, ownerName(ref.Owner, ""))
	var (
		tok  *gl.PersonalAccessToken
		resp *gl.Response
		err  error
	)
	if ref.Kind == ledger.ProjectAccessToken {
		var t *gl.ProjectAccessToken
		t, resp, err = c.gl.ProjectAccessTokens.RotateProjectAccessToken(ref.Owner, ref.GitLabID,
			&gl.RotateProjectAccessTokenOptions{ExpiresAt: &date},
			reqOpts(ctx, http.MethodPost, routeProjectAccessTokenRotate)...)
		if t != nil {
			tok = &t.PersonalAccessToken
		}
	} else {
		var t *gl.GroupAccessToken
		t, resp, err = c.gl.GroupAccessTokens.RotateGroupAccessToken(ref.Owner, ref.GitLabID,
			&gl.RotateGroupAccessTokenOptions{ExpiresAt: &date},
			reqOpts(ctx, http.MethodPost, routeGroupAccessTokenRotate)...)
		if t != nil {
			tok = &t.PersonalAccessToken
		}
	}
	if err != nil {
		if code := status(resp); code >= 200 && code < 300 {
			return exchange.Credential{}, fmt.Errorf("%s: %w: GitLab answered %d but the response was unreadable: %v", op, exchange.ErrAmbiguous, code, err)
		}
		return exchange.Credential{}, c.mapError(op, roleNeeded(ref.Kind, ownerName(ref.Owner, "")), resp, err, true)
	}
	if tok == nil || tok.Token == "" || tok.ID == 0 {
		return exchange.Credential{}, fmt.Errorf("%s: %w: GitLab answered %d without a token", op, exchange.ErrAmbiguous, status(resp))
	}
	if ref.Name != "" && tok.Name != ref.Name {
		// GitLab keeps the name; anything else is not the family we track.
		c.log.WarnContext(ctx, "gitlab rotated token came back under another name", "gitlab_id", tok.ID, "name", tok.Name, "want", ref.Name)
	}
	cred := exchange.Credential{
		Kind: ref.Kind, Owner: ref.Owner, GitLabID: tok.ID, Name: tok.Name, Secret: tok.Token,
		ExpiresAt: expiresAt,
		// The bot user does not change: the caller keeps its username (no
		// lookup, so a rotate costs one call).
	}
	c.log.DebugContext(ctx, "gitlab token rotated", "kind", string(ref.Kind), "owner_id", ref.Owner,
		"rotated_from", ref.GitLabID, "gitlab_id", cred.GitLabID, "username", cred.Username,
		"secret_sha256", fingerprint.Of(cred.Secret))
	return cred, nil
}
