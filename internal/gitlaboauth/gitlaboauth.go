// Package gitlaboauth logs a person in to GitLab's OAuth provider and keeps the grant fresh:
// Device runs the device authorization grant (RFC 8628), Browser the authorization code grant
// with PKCE (RFC 7636) on a loopback redirect (RFC 8252), Refresh trades a refresh token for a
// new pair (GitLab's refresh tokens work once) and Revoke ends a grant (RFC 7009). It is built
// on golang.org/x/oauth2. No error it returns contains a secret.
package gitlaboauth

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"golang.org/x/oauth2"
)

// DefaultScopes is what a login asks for unless told otherwise: clone and fetch, nothing more.
var DefaultScopes = []string{"read_repository"}

// ErrLoginNeeded: GitLab refused the refresh token (used, revoked or expired); only a new
// login helps.
var ErrLoginNeeded = errors.New("GitLab refused the refresh token")

// Grant is what a login yields: the access token with its expiry and the refresh token.
type Grant struct {
	Host         string    `json:"host"` // the GitLab base URL, scheme://host[:port]
	ClientID     string    `json:"client_id"`
	Scopes       []string  `json:"scopes"`
	AccessToken  string    `json:"access_token"`
	RefreshToken string    `json:"refresh_token"`
	ObtainedAt   time.Time `json:"obtained_at"`
	ExpiresAt    time.Time `json:"expires_at"`
}

// Client speaks OAuth to one GitLab instance.
type Client struct {
	Host     string       // GitLab base URL, https://gitlab.example.com
	ClientID string       // the OAuth application's id (a non-confidential application)
	HTTP     *http.Client // nil: http.DefaultClient
	Now      func() time.Time
}

func (c *Client) now() time.Time {
	if c.Now != nil {
		return c.Now()
	}
	return time.Now()
}

func (c *Client) config(scopes []string, redirect string) *oauth2.Config {
	base := strings.TrimRight(c.Host, "/")
	return &oauth2.Config{
		ClientID: c.ClientID,
		Endpoint: oauth2.Endpoint{
			AuthURL:       base + "/oauth/authorize",
			TokenURL:      base + "/oauth/token",
			DeviceAuthURL: base + "/oauth/authorize_device",
			AuthStyle:     oauth2.AuthStyleInParams, // a public client: client_id in the form, no secret
		},
		RedirectURL: redirect,
		Scopes:      scopes,
	}
}

func (c *Client) ctx(ctx context.Context) context.Context {
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	return context.WithValue(ctx, oauth2.HTTPClient, hc)
}

// Prompt is what the person must do to approve a device login.
type Prompt struct {
	VerificationURI         string
	VerificationURIComplete string
	UserCode                string
	ExpiresIn               time.Duration
}

// Device runs the device authorization grant: it asks GitLab for a user code, hands it to
// show, then polls /oauth/token at GitLab's interval (slower on slow_down) until the person
// approves, denies, or the code expires.
func (c *Client) Device(ctx context.Context, scopes []string, show func(Prompt)) (Grant, error) {
	cfg := c.config(scopes, "")
	octx := c.ctx(ctx)
	da, err := cfg.DeviceAuth(octx)
	if err != nil {
		return Grant{}, describe("start the device login", err)
	}
	show(Prompt{VerificationURI: da.VerificationURI, VerificationURIComplete: da.VerificationURIComplete, UserCode: da.UserCode,
		ExpiresIn: time.Until(da.Expiry).Round(time.Second)})
	tok, err := cfg.DeviceAccessToken(octx, da)
	if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
		return Grant{}, errors.New("the code expired before it was approved: run the login again")
	}
	if err != nil {
		return Grant{}, describe("finish the device login", err)
	}
	return c.grant(tok, scopes, Grant{})
}

// Browser runs the authorization code grant with PKCE S256: it listens on a loopback port,
// hands the authorization URL to open (a browser), and waits for GitLab's redirect.
func (c *Client) Browser(ctx context.Context, scopes []string, open func(authURL string) error) (Grant, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return Grant{}, fmt.Errorf("listen on a loopback port for GitLab's redirect: %w", err)
	}
	defer ln.Close()
	redirect := "http://" + ln.Addr().String() + "/"
	cfg := c.config(scopes, redirect)
	verifier := oauth2.GenerateVerifier()
	state := randomState()
	type result struct {
		code string
		err  error
	}
	got := make(chan result, 1)
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		var res result
		switch {
		case q.Get("state") != state:
			http.Error(w, "gltoken: unexpected request", http.StatusBadRequest)
			return
		case q.Get("error") != "":
			res.err = fmt.Errorf("GitLab refused the login: %s: %s", sanitize(q.Get("error")), sanitize(q.Get("error_description")))
		case q.Get("code") == "":
			res.err = errors.New("GitLab's redirect carried no code")
		default:
			res.code = q.Get("code")
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if res.err != nil {
			fmt.Fprintln(w, "gltoken: login failed; see the terminal.")
		} else {
			fmt.Fprintln(w, "gltoken: logged in; you can close this window.")
		}
		select {
		case got <- res:
		default:
		}
	})}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()
	authURL := cfg.AuthCodeURL(state, oauth2.S256ChallengeOption(verifier))
	if err := open(authURL); err != nil {
		return Grant{}, err
	}
	var res result
	select {
	case res = <-got:
	case <-ctx.Done():
		return Grant{}, ctx.Err()
	}
	if res.err != nil {
		return Grant{}, res.err
	}
	tok, err := cfg.Exchange(c.ctx(ctx), res.code, oauth2.VerifierOption(verifier))
	if err != nil {
		return Grant{}, describe("exchange the authorization code", err)
	}
	return c.grant(tok, scopes, Grant{})
}

// Refresh trades g's refresh token for a new pair. GitLab invalidates the old pair at once, so
// a refresh token must be used by one process only, once. ErrLoginNeeded when GitLab refuses.
func (c *Client) Refresh(ctx context.Context, g Grant) (Grant, error) {
	cfg := c.config(g.Scopes, "")
	tok, err := cfg.TokenSource(c.ctx(ctx), &oauth2.Token{RefreshToken: g.RefreshToken}).Token()
	var re *oauth2.RetrieveError
	if errors.As(err, &re) && (re.ErrorCode == "invalid_grant" || re.ErrorCode == "invalid_client" || re.ErrorCode == "unauthorized_client") {
		return Grant{}, fmt.Errorf("%w (%s)", ErrLoginNeeded, re.ErrorCode)
	}
	if err != nil {
		return Grant{}, describe("refresh the access token", err)
	}
	return c.grant(tok, g.Scopes, g)
}

// Revoke ends the grant at GitLab (POST /oauth/revoke with the refresh token; GitLab's token
// record holds the access token too).
func (c *Client) Revoke(ctx context.Context, g Grant) error {
	form := url.Values{"client_id": {c.ClientID}, "token": {g.RefreshToken}, "token_type_hint": {"refresh_token"}}
	if g.RefreshToken == "" {
		form.Set("token", g.AccessToken)
		form.Set("token_type_hint", "access_token")
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimRight(c.Host, "/")+"/oauth/revoke", strings.NewReader(form.Encode()))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("revoke at %s: %w", c.Host, stripURL(err))
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("revoke at %s: HTTP %d", c.Host, resp.StatusCode)
	}
	return nil
}

func (c *Client) grant(tok *oauth2.Token, asked []string, prev Grant) (Grant, error) {
	if tok.AccessToken == "" || tok.RefreshToken == "" {
		return Grant{}, errors.New("GitLab answered no access or refresh token")
	}
	now := c.now()
	exp := tok.Expiry
	if tok.ExpiresIn > 0 {
		exp = now.Add(time.Duration(tok.ExpiresIn) * time.Second)
	}
	if exp.IsZero() {
		exp = now.Add(2 * time.Hour) // GitLab's access_token_expires_in
	}
	scopes := asked
	if s, ok := tok.Extra("scope").(string); ok && s != "" {
		scopes = strings.Fields(s)
	}
	return Grant{Host: c.Host, ClientID: c.ClientID, Scopes: scopes, AccessToken: tok.AccessToken, RefreshToken: tok.RefreshToken,
		ObtainedAt: now, ExpiresAt: exp}, nil
}

// describe keeps GitLab's error code and description and drops the rest (bodies, URLs).
func describe(what string, err error) error {
	var re *oauth2.RetrieveError
	if errors.As(err, &re) {
		msg := re.ErrorCode
		if msg == "" {
			msg = fmt.Sprintf("HTTP %d", re.Response.StatusCode)
		}
		switch re.ErrorCode {
		case "access_denied":
			return fmt.Errorf("cannot %s: the login was denied at GitLab", what)
		case "expired_token":
			return fmt.Errorf("cannot %s: the code expired before it was approved: run the login again", what)
		case "invalid_client":
			return fmt.Errorf("cannot %s: GitLab knows no OAuth application with this client id (invalid_client): check --client-id", what)
		case "invalid_scope":
			return fmt.Errorf("cannot %s: the OAuth application does not allow these scopes (invalid_scope): ask the GitLab administrator to add them to the application", what)
		}
		if d := sanitize(re.ErrorDescription); d != "" {
			msg += ": " + d
		}
		return fmt.Errorf("cannot %s: %s", what, msg)
	}
	return fmt.Errorf("cannot %s: %w", what, stripURL(err))
}

func stripURL(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

func sanitize(s string) string {
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
	if len(s) > 200 {
		s = s[:200]
	}
	return s
}

func randomState() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
