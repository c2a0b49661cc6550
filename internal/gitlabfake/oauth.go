package gitlabfake

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"gltoken.dev/gltoken/internal/fingerprint"
	"gltoken.dev/gltoken/internal/loopback"
)

// GitLab's OAuth provider is Doorkeeper, configured in config/initializers/doorkeeper.rb and
// doorkeeper_device_authorization_grant.rb. Reproduced here:
//   - access tokens expire in 7200 s (access_token_expires_in 7200) and come with a refresh
//     token (use_refresh_token); a refresh answers a new pair and invalidates the old access
//     and refresh tokens at once (GitLab's OAuth docs: "Invalidates the existing access_token
//     and refresh_token"), so a refresh token works once;
//   - the device grant (RFC 8628): POST /oauth/authorize_device answers a user code valid for
//     300 s with a polling interval of 5 s and verification_uri {gitlab}/oauth/device; polling
//     faster than the interval answers slow_down; errors authorization_pending, slow_down,
//     access_denied, expired_token are 400 {"error","error_description"};
//   - requested scopes must be among the application's (enforce_configured_scopes):
//     invalid_scope otherwise; a blank scope means the default scope, api;
//   - the authorization code grant with PKCE (plain or S256); codes live 10 minutes and work
//     once; a loopback redirect URI matches the registered one on any port (RFC 8252 7.3);
//   - POST /oauth/revoke answers 200 whether or not the token was known;
//   - git over HTTP and /jwt/auth accept an OAuth access token as the password with any
//     username (Gitlab::Auth#oauth_access_token_check checks only the token; "oauth2" is the
//     documented convention), abilities from the token's scopes, the user's membership as for
//     a personal access token.
//
// Not modelled: confidential clients' secrets beyond a plain comparison, the consent page
// (a signed-in browser user consents at once, as for a trusted application), OpenID id_token,
// /oauth/token/info and /oauth/introspect.

const (
	oauthAccessTTL     = 7200 * time.Second
	oauthCodeTTL       = 10 * time.Minute
	deviceCodeTTL      = 300 * time.Second
	devicePollInterval = 5 * time.Second
	userCodeAlphabet   = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
)

// OAuthApplication is an OAuth application registered at the instance (Admin area or user
// settings > Applications).
type OAuthApplication struct {
	ID           int64
	Name         string
	UID          string // the client_id
	Secret       string // empty for a non-confidential application
	RedirectURIs []string
	Scopes       []string
	Confidential bool
}

type oauthToken struct {
	app        *OAuthApplication
	userID     int64
	scopes     []string
	access     string
	refresh    string
	createdAt  time.Time
	expiresIn  time.Duration
	revokedAt  *time.Time
	refreshedB bool // replaced by a refresh
}

func (t *oauthToken) accessible(now time.Time) bool {
	return t.revokedAt == nil && now.Before(t.createdAt.Add(t.expiresIn))
}

type deviceGrant struct {
	app        *OAuthApplication
	scopes     []string
	deviceCode string
	userCode   string
	expiresAt  time.Time
	lastPoll   time.Time
	userID     int64 // set when approved
	denied     bool
	used       bool
}

type accessGrant struct {
	app           *OAuthApplication
	userID        int64
	scopes        []string
	redirectURI   string
	challenge     string
	method        string
	expiresAt     time.Time
	used          bool
	issuedTokenID int // index into oauthTokens, to revoke on code reuse
}

// OAuthTokenEvent is one answer of POST /oauth/token, for tests that count refreshes.
type OAuthTokenEvent struct {
	GrantType string
	Error     string // "" on success
}

// AddOAuthApplication registers an application. A non-confidential one (a CLI, a native
// app) has no secret and must use PKCE or the device grant.
func (s *Server) AddOAuthApplication(name string, redirectURIs, scopes []string, confidential bool) *OAuthApplication {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.nextAppID++
	app := &OAuthApplication{ID: s.nextAppID, Name: name, UID: randomHex(32), RedirectURIs: slices.Clone(redirectURIs),
		Scopes: slices.Clone(scopes), Confidential: confidential}
	if confidential {
		app.Secret = "gloas-" + randomHex(32)
	}
	s.oauthApps[app.UID] = app
	return app
}

// SetBrowserUser signs u in at the stand-in's web UI, as the person's browser would be: the
// authorization endpoint then consents for u. nil signs out.
func (s *Server) SetBrowserUser(u *User) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.browserUser = u
}

// ApproveDevice is the person at {gitlab}/oauth/device entering userCode while signed in as
// u and pressing Authorize.
func (s *Server) ApproveDevice(userCode string, u *User) error {
	return s.decideDevice(userCode, u, false)
}

// DenyDevice is the person pressing Deny for userCode.
func (s *Server) DenyDevice(userCode string) error {
	return s.decideDevice(userCode, nil, true)
}

func (s *Server) decideDevice(userCode string, u *User, deny bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	g := s.deviceByUserCode[normalizeUserCode(userCode)]
	if g == nil || g.used || g.userID != 0 || g.denied || !s.now().Before(g.expiresAt) {
		return fmt.Errorf("gitlabfake: no pending device authorization with user code %q", userCode)
	}
	if deny {
		g.denied = true
		return nil
	}
	g.userID = u.ID
	return nil
}

// PendingDeviceCodes lists the user codes waiting for a person, oldest first.
func (s *Server) PendingDeviceCodes() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	now := s.now()
	for _, g := range s.deviceGrants {
		if !g.used && !g.denied && g.userID == 0 && now.Before(g.expiresAt) {
			out = append(out, g.userCode)
		}
	}
	return out
}

// OAuthTokenEvents returns every answer of POST /oauth/token so far, oldest first.
func (s *Server) OAuthTokenEvents() []OAuthTokenEvent {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.oauthEvents)
}

// LiveOAuthTokens counts the OAuth access tokens that still authenticate.
func (s *Server) LiveOAuthTokens() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, t := range s.oauthTokens {
		if t.accessible(s.now()) {
			n++
		}
	}
	return n
}

func normalizeUserCode(c string) string {
	return strings.ToUpper(strings.ReplaceAll(strings.TrimSpace(c), "-", ""))
}

func newUserCode() string {
	b := []byte(randomHex(8))
	out := make([]byte, 8)
	for i := range out {
		out[i] = userCodeAlphabet[int(b[i])%len(userCodeAlphabet)]
	}
	return string(out)
}

// oauthError answers RFC 6749 section 5.2.
func oauthError(w http.ResponseWriter, status int, code, desc string) {
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, status, map[string]string{"error": code, "error_description": desc})
}

const (
	descInvalidGrant  = "The provided authorization grant is invalid, expired, revoked, does not match the redirection URI used in the authorization request, or was issued to another client."
	descInvalidClient = "Client authentication failed due to unknown client, no client authentication included, or unsupported authentication method."
	descInvalidScope  = "The requested scope is invalid, unknown, or malformed."
)

// clientLocked authenticates the client from the form or Basic auth, as Doorkeeper's
// client_credentials :from_basic, :from_params.
func (s *Server) clientLocked(r *http.Request) (*OAuthApplication, bool) {
	id, secret, basic := r.BasicAuth()
	if !basic {
		id, secret = r.PostForm.Get("client_id"), r.PostForm.Get("client_secret")
	}
	app := s.oauthApps[id]
	if app == nil {
		return nil, false
	}
	if app.Confidential || secret != "" {
		if subtle.ConstantTimeCompare([]byte(secret), []byte(app.Secret)) != 1 {
			return nil, false
		}
	}
	return app, true
}

// scopesFor parses a requested scope against the application's scopes.
func scopesFor(app *OAuthApplication, requested string) ([]string, bool) {
	scopes := strings.Fields(requested)
	if len(scopes) == 0 {
		scopes = []string{"api"} // Doorkeeper's default_scopes: Gitlab::Auth::DEFAULT_SCOPES
	}
	var out []string
	for _, sc := range scopes {
		if !slices.Contains(app.Scopes, sc) {
			return nil, false
		}
		if !slices.Contains(out, sc) {
			out = append(out, sc)
		}
	}
	return out, true
}

func (s *Server) parseOAuthForm(w http.ResponseWriter, r *http.Request) bool {
	r.Body = http.MaxBytesReader(w, r.Body, 1<<16)
	if err := r.ParseForm(); err != nil {
		oauthError(w, http.StatusBadRequest, "invalid_request", "The request is missing a required parameter, includes an unsupported parameter value, or is otherwise malformed.")
		return false
	}
	return true
}

// handleAuthorizeDevice is POST /oauth/authorize_device (RFC 8628 section 3.1).
func (s *Server) handleAuthorizeDevice(w http.ResponseWriter, r *http.Request, _ params) {
	if !s.parseOAuthForm(w, r) {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	app, ok := s.clientLocked(r)
	if !ok {
		oauthError(w, http.StatusUnauthorized, "invalid_client", descInvalidClient)
		return
	}
	scopes, ok := scopesFor(app, r.PostForm.Get("scope"))
	if !ok {
		oauthError(w, http.StatusBadRequest, "invalid_scope", descInvalidScope)
		return
	}
	g := &deviceGrant{app: app, scopes: scopes, deviceCode: randomHex(32), userCode: newUserCode(), expiresAt: s.now().Add(deviceCodeTTL)}
	s.deviceGrants = append(s.deviceGrants, g)
	s.deviceByCode[g.deviceCode] = g
	s.deviceByUserCode[g.userCode] = g
	verify := s.url + "/oauth/device"
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, map[string]any{
		"device_code":               g.deviceCode,
		"user_code":                 g.userCode,
		"verification_uri":          verify,
		"verification_uri_complete": verify + "?user_code=" + url.QueryEscape(g.userCode),
		"expires_in":                int(deviceCodeTTL / time.Second),
		"interval":                  int(devicePollInterval / time.Second),
	})
}

// handleDevicePage is GET /oauth/device: the page where a signed-in person enters the code.
func (s *Server) handleDevicePage(w http.ResponseWriter, r *http.Request, _ params) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	fmt.Fprintf(w, "<!DOCTYPE html><title>Device authorization</title><h1>Connect a device</h1><form method=post action=\"/oauth/device\"><input name=user_code value=%q><button>Submit</button></form>\n",
		r.URL.Query().Get("user_code"))
}

// handleStandinDevice is the stand-in's way to press Authorize or Deny on the device page
// (loopback only): POST /-/standin/oauth/device user_code=…&user=USERNAME&action=approve|deny.
func (s *Server) handleStandinDevice(w http.ResponseWriter, r *http.Request, _ params) {
	if !isLoopbackRemote(r) {
		writeMessage(w, http.StatusForbidden, "403 Forbidden")
		return
	}
	if err := r.ParseForm(); err != nil {
		writeMessage(w, http.StatusBadRequest, "400 Bad request")
		return
	}
	code, action := r.Form.Get("user_code"), r.Form.Get("action")
	var err error
	switch action {
	case "approve", "":
		s.mu.Lock()
		u := s.usersByName[r.Form.Get("user")]
		s.mu.Unlock()
		if u == nil {
			writeMessage(w, http.StatusNotFound, "404 User Not Found")
			return
		}
		err = s.ApproveDevice(code, u)
	case "deny":
		err = s.DenyDevice(code)
	default:
		writeMessage(w, http.StatusBadRequest, "action must be approve or deny")
		return
	}
	if err != nil {
		writeMessage(w, http.StatusNotFound, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"user_code": normalizeUserCode(code), "action": action})
}

func isLoopbackRemote(r *http.Request) bool { return loopback.Remote(r.RemoteAddr) }

// handleAuthorize is GET /oauth/authorize (authorization code grant, RFC 6749 section 4.1,
// with PKCE, RFC 7636).
func (s *Server) handleAuthorize(w http.ResponseWriter, r *http.Request, _ params) {
	q := r.URL.Query()
	s.mu.Lock()
	defer s.mu.Unlock()
	app := s.oauthApps[q.Get("client_id")]
	redirect := q.Get("redirect_uri")
	if app == nil || !redirectAllowed(app, redirect) {
		// Doorkeeper shows an error page instead of redirecting to an unverified URI.
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.WriteHeader(http.StatusUnauthorized)
		fmt.Fprint(w, "<!DOCTYPE html><h1>An error has occurred</h1><p>Client authentication failed due to unknown client, no client authentication included, or unsupported authentication method.</p>\n")
		return
	}
	back := func(vals url.Values) {
		if st := q.Get("state"); st != "" {
			vals.Set("state", st)
		}
		u, _ := url.Parse(redirect)
		u.RawQuery = vals.Encode()
		http.Redirect(w, r, u.String(), http.StatusFound)
	}
	if q.Get("response_type") != "code" {
		back(url.Values{"error": {"unsupported_response_type"}, "error_description": {"The authorization server does not support this response type."}})
		return
	}
	scopes, ok := scopesFor(app, q.Get("scope"))
	if !ok {
		back(url.Values{"error": {"invalid_scope"}, "error_description": {descInvalidScope}})
		return
	}
	method := q.Get("code_challenge_method")
	challenge := q.Get("code_challenge")
	if challenge != "" && method == "" {
		method = "plain"
	}
	if challenge != "" && method != "plain" && method != "S256" {
		back(url.Values{"error": {"invalid_request"}, "error_description": {"The code challenge method must be plain or S256."}})
		return
	}
	if !app.Confidential && challenge == "" {
		back(url.Values{"error": {"invalid_request"}, "error_description": {"The request is missing a required parameter: code_challenge."}})
		return
	}
	if s.browserUser == nil {
		http.Redirect(w, r, s.url+"/users/sign_in", http.StatusFound)
		return
	}
	code := randomHex(32)
	s.accessGrants[code] = &accessGrant{app: app, userID: s.browserUser.ID, scopes: scopes, redirectURI: redirect,
		challenge: challenge, method: method, expiresAt: s.now().Add(oauthCodeTTL), issuedTokenID: -1}
	back(url.Values{"code": {code}})
}

// redirectAllowed matches a redirect URI against the registered ones; a loopback IP
// redirect matches on any port (RFC 8252 section 7.3).
func redirectAllowed(app *OAuthApplication, redirect string) bool {
	got, err := url.Parse(redirect)
	if err != nil || redirect == "" {
		return false
	}
	for _, reg := range app.RedirectURIs {
		if reg == redirect {
			return true
		}
		want, err := url.Parse(reg)
		if err != nil || want.Scheme != "http" || got.Scheme != "http" {
			continue
		}
		if loopback.Host(want.Hostname()) && want.Hostname() == got.Hostname() && strings.TrimSuffix(want.Path, "/") == strings.TrimSuffix(got.Path, "/") {
			return true
		}
	}
	return false
}

// handleOAuthToken is POST /oauth/token.
func (s *Server) handleOAuthToken(w http.ResponseWriter, r *http.Request, _ params) {
	if !s.parseOAuthForm(w, r) {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	grant := r.PostForm.Get("grant_type")
	fail := func(status int, code, desc string) {
		s.oauthEvents = append(s.oauthEvents, OAuthTokenEvent{GrantType: grant, Error: code})
		oauthError(w, status, code, desc)
	}
	app, ok := s.clientLocked(r)
	if !ok {
		fail(http.StatusUnauthorized, "invalid_client", descInvalidClient)
		return
	}
	now := s.now()
	var (
		userID int64
		scopes []string
	)
	switch grant {
	case "urn:ietf:params:oauth:grant-type:device_code", "device_code":
		g := s.deviceByCode[r.PostForm.Get("device_code")]
		switch {
		case g == nil || g.app != app || g.used:
			fail(http.StatusBadRequest, "invalid_grant", descInvalidGrant)
			return
		case !now.Before(g.expiresAt):
			fail(http.StatusBadRequest, "expired_token", "The device_code has expired, and the device authorization session has concluded.")
			return
		case g.denied:
			g.used = true
			fail(http.StatusBadRequest, "access_denied", "The resource owner or authorization server denied the request.")
			return
		}
		tooSoon := !g.lastPoll.IsZero() && now.Sub(g.lastPoll) < devicePollInterval
		g.lastPoll = now
		if tooSoon {
			fail(http.StatusBadRequest, "slow_down", "A variant of \"authorization_pending\", the authorization request is still pending and polling should continue, but the interval MUST be increased by 5 seconds for this and all subsequent requests.")
			return
		}
		if g.userID == 0 {
			fail(http.StatusBadRequest, "authorization_pending", "The authorization request is still pending as the end user hasn't yet completed the user-interaction steps.")
			return
		}
		g.used = true
		userID, scopes = g.userID, g.scopes
	case "authorization_code":
		code := r.PostForm.Get("code")
		g := s.accessGrants[code]
		if g == nil || g.app != app || !now.Before(g.expiresAt) || g.redirectURI != r.PostForm.Get("redirect_uri") {
			fail(http.StatusBadRequest, "invalid_grant", descInvalidGrant)
			return
		}
		if g.used {
			// A code used twice revokes what it issued (RFC 6749 section 4.1.2).
			if g.issuedTokenID >= 0 {
				t := s.oauthTokens[g.issuedTokenID]
				if t.revokedAt == nil {
					t.revokedAt = &now
				}
			}
			fail(http.StatusBadRequest, "invalid_grant", descInvalidGrant)
			return
		}
		if g.challenge != "" && !pkceMatches(g.method, g.challenge, r.PostForm.Get("code_verifier")) {
			fail(http.StatusBadRequest, "invalid_grant", descInvalidGrant)
			return
		}
		g.used = true
		userID, scopes = g.userID, g.scopes
		defer func() { g.issuedTokenID = len(s.oauthTokens) - 1 }()
	case "refresh_token":
		old := s.oauthByRefresh[fingerprint.Of(r.PostForm.Get("refresh_token"))]
		if old == nil || old.app != app || old.revokedAt != nil {
			fail(http.StatusBadRequest, "invalid_grant", descInvalidGrant)
			return
		}
		scopes = old.scopes
		if sc := r.PostForm.Get("scope"); sc != "" {
			narrowed := strings.Fields(sc)
			for _, x := range narrowed {
				if !slices.Contains(old.scopes, x) {
					fail(http.StatusBadRequest, "invalid_scope", descInvalidScope)
					return
				}
			}
			scopes = narrowed
		}
		old.revokedAt = &now
		old.refreshedB = true
		userID = old.userID
	case "":
		fail(http.StatusBadRequest, "invalid_request", "The request is missing a required parameter: grant_type.")
		return
	default:
		fail(http.StatusBadRequest, "unsupported_grant_type", "The authorization grant type is not supported by the authorization server.")
		return
	}
	access, refresh := randomHex(32), randomHex(32)
	t := &oauthToken{app: app, userID: userID, scopes: slices.Clone(scopes), access: fingerprint.Of(access), refresh: fingerprint.Of(refresh), createdAt: now, expiresIn: oauthAccessTTL}
	s.oauthTokens = append(s.oauthTokens, t)
	s.oauthByAccess[t.access] = t
	s.oauthByRefresh[t.refresh] = t
	s.oauthEvents = append(s.oauthEvents, OAuthTokenEvent{GrantType: grant})
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, map[string]any{
		"access_token":  access,
		"token_type":    "Bearer",
		"expires_in":    int(oauthAccessTTL / time.Second),
		"refresh_token": refresh,
		"scope":         strings.Join(scopes, " "),
		"created_at":    now.Unix(),
	})
}

func pkceMatches(method, challenge, verifier string) bool {
	if verifier == "" {
		return false
	}
	want := verifier
	if method == "S256" {
		sum := sha256.Sum256([]byte(verifier))
		want = base64.RawURLEncoding.EncodeToString(sum[:])
	}
	return subtle.ConstantTimeCompare([]byte(want), []byte(challenge)) == 1
}

// handleOAuthRevoke is POST /oauth/revoke (RFC 7009): an access or a refresh token; 200 either way.
func (s *Server) handleOAuthRevoke(w http.ResponseWriter, r *http.Request, _ params) {
	if !s.parseOAuthForm(w, r) {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	app, ok := s.clientLocked(r)
	if !ok {
		oauthError(w, http.StatusUnauthorized, "invalid_client", descInvalidClient)
		return
	}
	h := fingerprint.Of(r.PostForm.Get("token"))
	t := s.oauthByAccess[h]
	if t == nil {
		t = s.oauthByRefresh[h]
	}
	if t != nil && t.app == app && t.revokedAt == nil {
		now := s.now()
		t.revokedAt = &now
	}
	writeJSON(w, http.StatusOK, map[string]any{})
}

// oauthActorLocked is Gitlab::Auth#oauth_access_token_check: any login, an accessible
// token with at least one of the configured scopes, a user who may sign in.
func (s *Server) oauthActorLocked(login, password string) *gitActor {
	t := s.oauthByAccess[fingerprint.Of(password)]
	if t == nil || !t.accessible(s.now()) {
		return nil
	}
	u := s.users[t.userID]
	if u == nil || u.Bot {
		return nil
	}
	return &gitActor{user: u, abilities: abilitiesForScopes(t.scopes), login: login, oauth: true}
}
