package gitlab

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	gl "gitlab.com/gitlab-org/api/client-go"

	"gltoken.dev/gltoken/internal/svctoken"
)

// Route templates of the service token's own endpoints.
const (
	routePATSelf       = "/personal_access_tokens/self"
	routePATSelfRotate = "/personal_access_tokens/self/rotate"
)

var _ svctoken.GitLab = (*Client)(nil)

// tokenSource is a client-go AuthSource that reads the service token in force
// at each request, so a rotated token takes effect without a new client.
type tokenSource func() string

func (tokenSource) Init(context.Context, *gl.Client) error { return nil }

func (f tokenSource) Header(context.Context) (string, string, error) {
	tok := f()
	if tok == "" {
		return "", "", errors.New("gitlab: no service token")
	}
	return gl.AccessTokenHeaderName, tok, nil
}

// SelfToken asks GitLab about the token secret itself (GET
// /personal_access_tokens/self), whatever the token in force is, on the
// budget of the Client's token that holds secret (else its first; see
// Account for a Keeper's). A revoked or
// expired token answers an error wrapping ErrTokenInvalid. Never a rotate path,
// so a revoked token presented here does not trigger GitLab's reuse detection.
func (c *Client) SelfToken(ctx context.Context, secret string) (svctoken.Info, error) {
	return c.selfToken(withToken(ctx, c.router.indexOf(secret)), secret)
}

func (c *Client) selfToken(ctx context.Context, secret string) (svctoken.Info, error) {
	opts := append(reqOpts(ctx, http.MethodGet, routePATSelf), gl.WithToken(gl.PrivateToken, secret))
	tok, resp, err := c.gl.PersonalAccessTokens.GetSinglePersonalAccessToken(opts...)
	if err != nil {
		err = c.mapError("read the service token", "", resp, err, false)
		if status(resp) == http.StatusUnauthorized {
			return svctoken.Info{}, fmt.Errorf("%w: %w", svctoken.ErrRevoked, err)
		}
		return svctoken.Info{}, err
	}
	return tokenInfo(tok), nil
}

// RotateSelf rotates the token secret (POST /personal_access_tokens/self/rotate)
// with an explicit expires_at (a date; GitLab makes the token invalid from the
// start of that date). GitLab revokes secret at once and returns its successor.
// Never retried: an answer that may have been lost (timeout, dropped
// connection, 5xx, unreadable 2xx) wraps exchange.ErrAmbiguous, and the caller
// MUST NOT present secret to a rotate path again before it has made sure the
// token is still active (a revoked token there revokes the whole family).
func (c *Client) RotateSelf(ctx context.Context, secret string, expiresAt time.Time) (string, svctoken.Info, error) {
	return c.rotateSelf(withToken(ctx, c.router.indexOf(secret)), secret, expiresAt)
}

func (c *Client) rotateSelf(ctx context.Context, secret string, expiresAt time.Time) (string, svctoken.Info, error) {
	date := gl.ISOTime(time.Date(expiresAt.UTC().Year(), expiresAt.UTC().Month(), expiresAt.UTC().Day(), 0, 0, 0, 0, time.UTC))
	opts := append(reqOpts(ctx, http.MethodPost, routePATSelfRotate), gl.WithToken(gl.PrivateToken, secret))
	tok, resp, err := c.gl.PersonalAccessTokens.RotatePersonalAccessTokenSelf(
		&gl.RotatePersonalAccessTokenOptions{ExpiresAt: &date}, opts...)
	if err != nil {
		mapped := c.mapError("rotate the service token", "", resp, err, true)
		code := status(resp)
		switch {
		case code == http.StatusUnauthorized:
			return "", svctoken.Info{}, fmt.Errorf("%w: %w", svctoken.ErrRevoked, mapped)
		case code == 0 && notSent(err):
			return "", svctoken.Info{}, mapped // never reached GitLab
		case code == 0, code >= 500, code >= 200 && code < 300:
			// GitLab may have rotated (and revoked secret) without our
			// hearing the successor: a 2xx we could not read, a 5xx from a
			// proxy after the commit, a dropped connection, a timeout.
			return "", svctoken.Info{}, fmt.Errorf("%w: %w", svctoken.ErrLost, mapped)
		default:
			return "", svctoken.Info{}, mapped // a definite refusal: nothing changed
		}
	}
	if tok == nil || strings.TrimSpace(tok.Token) == "" {
		return "", svctoken.Info{}, fmt.Errorf("rotate the service token: %w: GitLab answered %d without a token", svctoken.ErrLost, status(resp))
	}
	return tok.Token, tokenInfo(tok), nil
}

func tokenInfo(tok *gl.PersonalAccessToken) svctoken.Info {
	info := svctoken.Info{
		ID: tok.ID, Name: tok.Name, UserID: tok.UserID, Scopes: append([]string(nil), tok.Scopes...),
		Active: tok.Active && !tok.Revoked,
	}
	if tok.ExpiresAt != nil {
		info.ExpiresAt = time.Time(*tok.ExpiresAt)
	}
	return info
}
