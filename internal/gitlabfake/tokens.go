package gitlabfake

import (
	"crypto/rand"
	"encoding/hex"
	"math/big"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"time"

	"gltoken.dev/gltoken/internal/fingerprint"
)

// Token kinds, as TokenState.Kind. The four gltoken mints are named as the
// daemon names them (ledger.Kind: audit events, metrics, the demo), so a
// kind reads the same whichever side shows it.
const (
	KindPersonal      = "personal_access_token"
	KindProjectAccess = "project_access_token"
	KindGroupAccess   = "group_access_token"
	KindDeployProject = "project_deploy_token"
	KindDeployGroup   = "group_deploy_token"
)

// TokenState is what the stand-in knows about a token. It never holds the secret.
type TokenState struct {
	Kind         string
	ID           int64 // deploy tokens and personal/access tokens have separate id sequences, as in GitLab
	Name         string
	Description  string
	OwnerPath    string // project or group path (access and deploy tokens); "" for personal tokens
	Username     string // deploy token username, or the token user's username
	Scopes       []string
	ExpiresAt    *time.Time // deploy: exact instant; personal/access: 00:00 UTC of the expiry date
	Revoked      bool
	Deleted      bool // deploy token deleted through the API (hard delete: GET answers 404)
	AccessLevel  int  // project/group access tokens
	UserID       int64
	PreviousID   int64 // the token this one was rotated from
	SecretSHA256 string
	CreatedAt    time.Time
	LastUsedAt   *time.Time
}

type token struct {
	TokenState
	hash string
}

// Scope lists, from lib/gitlab/auth.rb and app/models/deploy_token.rb.
var (
	deployTokenScopes = []string{"read_repository", "read_registry", "write_registry",
		"read_package_registry", "write_package_registry", "read_virtual_registry", "write_virtual_registry"}
	resourceBotScopes = []string{"api", "read_api", "read_repository", "write_repository",
		"read_registry", "write_registry", "read_virtual_registry", "write_virtual_registry",
		"create_runner", "manage_runner", "ai_features", "k8s_proxy", "self_rotate",
		"read_observability", "write_observability"}
	personalScopes = append([]string{"read_user", "read_service_ping", "sudo", "admin_mode"}, resourceBotScopes...)
)

// maxTokenLifetimeDays is ApplicationSetting#max_auth_lifetime: 365 days,
// 400 with the buffered_token_expiration_limit feature flag (17.6+).
const (
	maxTokenLifetimeDays         = 365
	bufferedMaxTokenLifetimeDays = 400
)

func (s *Server) maxLifetimeDays() int {
	if s.opts.BufferedTokenExpirationLimit {
		return bufferedMaxTokenLifetimeDays
	}
	return maxTokenLifetimeDays
}

func isPAT(kind string) bool {
	return kind == KindPersonal || kind == KindProjectAccess || kind == KindGroupAccess
}

func isDeploy(kind string) bool { return kind == KindDeployProject || kind == KindDeployGroup }

const secretAlphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-"

func newSecret(prefix string) string {
	b := make([]byte, 20)
	for i := range b {
		n, err := rand.Int(rand.Reader, big.NewInt(int64(len(secretAlphabet))))
		if err != nil {
			panic(err)
		}
		b[i] = secretAlphabet[n.Int64()]
	}
	return prefix + string(b)
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

// dateUTC is 00:00 UTC of t's UTC date.
func dateUTC(t time.Time) time.Time {
	y, m, d := t.UTC().Date()
	return time.Date(y, m, d, 0, 0, 0, 0, time.UTC)
}

func (s *Server) storeTokenLocked(t *token, secret string) {
	t.hash = fingerprint.Of(secret)
	t.SecretSHA256 = t.hash
	s.tokens = append(s.tokens, t)
	s.tokenByHash[t.hash] = t
}

// CreatePersonalAccessToken issues a glpat- token for u (e.g. the service account) and returns
// the secret. expiresAt is truncated to its UTC date, like GitLab; nil means no expiry.
func (s *Server) CreatePersonalAccessToken(u *User, name string, scopes []string, expiresAt *time.Time) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var exp *time.Time
	if expiresAt != nil {
		d := dateUTC(*expiresAt)
		exp = &d
	}
	secret := newSecret("glpat-")
	s.nextPATID++
	t := &token{TokenState: TokenState{
		Kind: KindPersonal, ID: s.nextPATID, Name: name, Username: u.Username, UserID: u.ID,
		Scopes: slices.Clone(scopes), ExpiresAt: exp, CreatedAt: s.now().UTC(),
	}}
	s.storeTokenLocked(t, secret)
	return secret
}

// TokenStats counts what the stand-in did with project and group access
// tokens, for tests that bound GitLab's work.
type TokenStats struct {
	AccessTokenCreates int // POST /:kind/:id/access_tokens that made a token
	AccessTokenRotates int // successful rotations of access tokens (by id or self)
	BotUsers           int // bot users made for access tokens (one per create)
}

// Stats returns the access-token counters.
func (s *Server) Stats() TokenStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stats
}

// BotUsersOf counts the distinct bot users of the access tokens on the
// project or group at ownerPath, revoked ones included.
func (s *Server) BotUsersOf(ownerPath string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	seen := map[int64]bool{}
	for _, t := range s.tokens {
		if (t.Kind == KindProjectAccess || t.Kind == KindGroupAccess) && t.OwnerPath == ownerPath {
			seen[t.UserID] = true
		}
	}
	return len(seen)
}

// Tokens returns the state of every token ever issued, in creation order.
func (s *Server) Tokens() []TokenState {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]TokenState, 0, len(s.tokens))
	for _, t := range s.tokens {
		out = append(out, t.snapshot())
	}
	return out
}

// TokenByName returns the most recently created token with that name.
func (s *Server) TokenByName(name string) (TokenState, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := len(s.tokens) - 1; i >= 0; i-- {
		if s.tokens[i].Name == name {
			return s.tokens[i].snapshot(), true
		}
	}
	return TokenState{}, false
}

// RevokeToken revokes a token out of band (as an administrator would in the UI).
func (s *Server) RevokeToken(kind string, id int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, t := range s.tokens {
		if t.ID == id && (t.Kind == kind || (isPAT(kind) && isPAT(t.Kind))) {
			t.Revoked = true
		}
	}
}

func (t *token) snapshot() TokenState {
	c := t.TokenState
	c.Scopes = slices.Clone(t.Scopes)
	if t.ExpiresAt != nil {
		e := *t.ExpiresAt
		c.ExpiresAt = &e
	}
	if t.LastUsedAt != nil {
		l := *t.LastUsedAt
		c.LastUsedAt = &l
	}
	return c
}

// patExpired: personal/access tokens expire at 00:00 UTC of their expiry date.
func (s *Server) patExpiredLocked(t *token) bool {
	return t.ExpiresAt != nil && !s.now().Before(*t.ExpiresAt)
}

// deployActiveLocked is DeployToken.active: revoked = false AND expires_at >= NOW().
func (s *Server) deployActiveLocked(t *token) bool {
	if t.Revoked || t.Deleted {
		return false
	}
	return t.ExpiresAt == nil || !s.now().After(*t.ExpiresAt)
}

// deployExpiredField is DeployToken#expired? as shown in the API: expires_at < Date.today
// (date-granular, unlike authentication).
func (s *Server) deployExpiredFieldLocked(t *token) bool {
	return t.ExpiresAt != nil && t.ExpiresAt.Before(dateUTC(s.now()))
}

func (s *Server) patActiveLocked(t *token) bool { return !t.Revoked && !s.patExpiredLocked(t) }

// ---- REST API authentication (lib/api/api_guard.rb, lib/gitlab/auth/auth_finders.rb) ----

var rotationPath = regexp.MustCompile(`access_tokens/(\d+|self)/rotate$`)

type apiCaller struct {
	user *User
	tok  *token
}

type scopeRule int

const (
	scopeAPI      scopeRule = iota // api, or read_api on GET
	scopeRotate                    // api or self_rotate
	scopeAnyScope                  // any scope
	scopeReadUser                  // api, read_api or read_user
)

// authenticateAPI finds the caller of a REST request. On failure it has answered and returns nil.
func (s *Server) authenticateAPI(w http.ResponseWriter, r *http.Request, rule scopeRule) *apiCaller {
	secret := r.Header.Get("PRIVATE-TOKEN")
	if secret == "" {
		if a := r.Header.Get("Authorization"); len(a) > 7 && strings.EqualFold(a[:7], "Bearer ") {
			secret = strings.TrimSpace(a[7:])
		}
	}
	if secret == "" {
		secret = r.URL.Query().Get("private_token")
	}
	if secret == "" {
		secret = r.URL.Query().Get("access_token")
	}
	if secret == "" {
		// JOB-TOKEN (CI job tokens) is not modelled: no job is ever running here.
		writeMessage(w, http.StatusUnauthorized, "401 Unauthorized")
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.tokenByHash[fingerprint.Of(secret)]
	if t == nil || !isPAT(t.Kind) {
		// Deploy tokens are not REST API credentials.
		writeMessage(w, http.StatusUnauthorized, "401 Unauthorized")
		return nil
	}
	if t.Revoked {
		if rotationPath.MatchString(r.URL.EscapedPath()) {
			// Reuse detection: presenting a revoked token to a rotation endpoint revokes the
			// whole family (PersonalAccessTokens::RevokeTokenFamilyService).
			s.revokeFamilyLocked(t)
		}
		bearerError(w, "Token was revoked. You have to re-authorize from the user.")
		return nil
	}
	if s.patExpiredLocked(t) {
		bearerError(w, "Token is expired. You can either do re-authorization or token refresh.")
		return nil
	}
	ok := false
	switch rule {
	case scopeAnyScope:
		ok = true
	case scopeRotate:
		ok = slices.Contains(t.Scopes, "api") || slices.Contains(t.Scopes, "self_rotate")
	case scopeReadUser:
		ok = slices.Contains(t.Scopes, "api") || slices.Contains(t.Scopes, "read_api") || slices.Contains(t.Scopes, "read_user")
	default:
		ok = slices.Contains(t.Scopes, "api") ||
			(slices.Contains(t.Scopes, "read_api") && (r.Method == http.MethodGet || r.Method == http.MethodHead))
	}
	if !ok {
		scope := "api read_api"
		switch rule {
		case scopeRotate:
			scope = "api self_rotate"
		case scopeReadUser:
			scope = "api read_api read_user"
		}
		writeJSON(w, http.StatusForbidden, map[string]string{
			"error":             "insufficient_scope",
			"error_description": "The request requires higher privileges than provided by the access token.",
			"scope":             scope,
		})
		return nil
	}
	u := s.users[t.UserID]
	now := s.now().UTC()
	t.LastUsedAt = &now
	return &apiCaller{user: u, tok: t}
}

// revokeFamilyLocked revokes every active token rotated from (or into) t.
func (s *Server) revokeFamilyLocked(t *token) {
	// The family is t and every token rotated from it, directly or not (a recursive CTE on
	// previous_personal_access_token_id in GitLab).
	family := map[int64]bool{t.ID: true}
	for changed := true; changed; {
		changed = false
		for _, x := range s.tokens {
			if isPAT(x.Kind) && !family[x.ID] && family[x.PreviousID] {
				family[x.ID] = true
				changed = true
			}
		}
	}
	for _, x := range s.tokens {
		if isPAT(x.Kind) && family[x.ID] && s.patActiveLocked(x) {
			x.Revoked = true
		}
	}
}

// bearerError is rack-oauth2's Bearer::Unauthorized as GitLab's API guard answers it for expired
// and revoked tokens.
func bearerError(w http.ResponseWriter, desc string) {
	w.Header().Set("WWW-Authenticate", `Bearer realm="OAuth2 Resource Server", error="invalid_token", error_description="`+desc+`"`)
	writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "invalid_token", "error_description": desc})
}
