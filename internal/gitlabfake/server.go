// Package gitlabfake provides a faithful GitLab stand-in for tests and the demo: OIDC discovery and
// JWKS with key rotation, CI/CD ID tokens with GitLab's claims, the deploy-token, project/group
// access-token, PAT self-rotation and project/group REST APIs with GitLab's status codes and JSON
// shapes, rate-limit headers and fault injection, git smart HTTP through the real `git http-backend`
// with GitLab's credential rules, the container-registry token endpoint, Go's ?go-get=1
// discovery as GitLab's middleware answers it (goget.go), and Git LFS: the batch API, upload,
// download and LFS tokens (lfs.go). With Options.Host it is GitLab at https://HOST, reached
// through a CONNECT proxy of its own (tls.go).
//
// Start one with Start(t, Options{}) in a test (or New outside tests) and point clients at URL().
// Anything the stand-in does not know answers 501 {"message":"stand-in: route not implemented: ..."}
// so gaps fail loudly. It is never linked into the shipped binaries.
//
// GitLab behaviour reproduced on purpose (checked against GitLab's source):
//   - deploy tokens authenticate while expires_at >= now (to the second), but their "expired"
//     field is date-granular; personal/access tokens are invalid from 00:00 UTC of expires_at;
//   - the default branch is fully protected: only Maintainers push to it (a pre-receive hook);
//   - read_api grants git clone; deploy tokens never push and never call the REST API;
//   - presenting a revoked token to a rotate endpoint revokes the whole rotation family;
//   - unknown tokens get 401 {"message":"401 Unauthorized"}, expired and revoked ones GitLab's
//     rack-oauth2 {"error":"invalid_token",...}, missing scopes 403 insufficient_scope.
//
// OAuth as GitLab's Doorkeeper does it (applications, the device grant, the authorization code
// grant with PKCE, refresh-token rotation, revocation, OAuth tokens for git and the registry):
// see oauth.go.
//
// Not modelled: passwords, CI job tokens (JOB-TOKEN), SSH, user
// namespaces, per-user rate limits (one limit for all requests), protected branches other than
// the default branch.
//
// Stand-in-only route (GitLab has nothing like it), answered to loopback clients:
// GET /-/standin/id_token?project=P&ref=R&ref_type=branch|tag&aud=A[&aud=B]&user=U&ref_protected=true
// &environment=E&timeout=SECONDS returns an ID token for that job as text/plain (lasting 1 h
// without timeout); POST /-/standin/projects path=P&maintainer=U&developer=U&reporter=U creates
// a project (and the users named) while the stand-in runs;
// POST /-/standin/oauth/device user_code=C&user=U&action=approve|deny presses Authorize (as U)
// or Deny on the device verification page.
package gitlabfake

import (
	"crypto/rsa"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"sync"
	"time"
)

// Options configures a Server. Zero values are fine.
type Options struct {
	// Now is the clock; token expiry, authentication, ID-token times and the rate-limit window use it.
	// Default time.Now.
	Now func() time.Time
	// RepoRoot is where bare repositories live. Default: a temporary directory removed on Close.
	RepoRoot string
	// BufferedTokenExpirationLimit is GitLab's buffered_token_expiration_limit
	// feature flag: access tokens may then live 400 days instead of 365.
	BufferedTokenExpirationLimit bool
	// Logf, when set, receives one line per request (method, escaped path, status). Never secrets.
	Logf func(format string, args ...any)
	// Host, e.g. "gitlab.example.com", puts the stand-in at https://HOST (no port): it serves
	// TLS under a CA of its own (CACertPEM) and clients reach it through ProxyURL. See tls.go.
	Host string
	// TLS, without Host, serves https at the loopback URL, https://127.0.0.1:PORT (the
	// ID-token issuer and the registry's token realm too), under a CA of its own (CACertPEM,
	// ServerCertPEM), with no proxy.
	TLS bool
}

// Server is a running GitLab stand-in listening on a loopback port.
type Server struct {
	opts     Options
	now      func() time.Time
	ln       net.Listener
	srv      *http.Server
	url      string
	tls      *tlsState // with Options.Host (tls.go)
	repoRoot string
	ownRoot  bool
	gitPath  string

	gitMu sync.Mutex // serialises writes to the bare repositories

	mu sync.Mutex // guards everything below

	nextUserID, nextNSID, nextProjectID, nextPATID, nextDeployID int64

	users          map[int64]*User
	usersByName    map[string]*User
	groups         map[int64]*Group
	groupsByPath   map[string]*Group
	projects       map[int64]*Project
	projectsByPath map[string]*Project
	// projectRedirects maps an old full path (lower-cased) to the project a
	// move or rename took it from, like GitLab's redirect routes.
	projectRedirects map[string]int64
	members          map[string]map[int64]int // source key ("g:ID"/"p:ID") -> user id -> access level

	tokens      []*token // every token ever issued (deploy tokens too, deleted ones flagged)
	tokenByHash map[string]*token

	keys       []*signingKey // published in JWKS, in order added
	currentKID string
	dropped    *signingKey // the current key after DropSigningKey removed it from the JWKS

	oidcOnce       sync.Once
	oidcSigningKey *signingKey
	oidcErr        error
	jobSeq         int64

	registryOnce sync.Once // the registry key is made on first use (key generation is slow)
	registryErr  error
	registryKey  *rsa.PrivateKey
	registryCert []byte // PEM

	faults            []*faultEntry
	rateLimit         int
	rateBuckets       map[int64]*rateBucket // by user id
	rateHeadersAlways bool

	requests []Request

	stats TokenStats

	nextAppID        int64
	oauthApps        map[string]*OAuthApplication // by client id
	browserUser      *User
	deviceGrants     []*deviceGrant
	deviceByCode     map[string]*deviceGrant
	deviceByUserCode map[string]*deviceGrant
	accessGrants     map[string]*accessGrant
	oauthTokens      []*oauthToken
	oauthByAccess    map[string]*oauthToken
	oauthByRefresh   map[string]*oauthToken
	oauthEvents      []OAuthTokenEvent

	jobsOnce sync.Once
	jobState *jobState // CI jobs and webhooks (jobs.go)

	lfsOnce sync.Once
	lfs     *lfsState // Git LFS objects and the LFS token key (lfs.go)

	closeOnce sync.Once
	closeErr  error
}

// New starts a stand-in on 127.0.0.1:0. It serves at once.
func New(opts Options) (*Server, error) {
	s := &Server{
		opts:             opts,
		now:              opts.Now,
		users:            map[int64]*User{},
		usersByName:      map[string]*User{},
		groups:           map[int64]*Group{},
		groupsByPath:     map[string]*Group{},
		projects:         map[int64]*Project{},
		projectsByPath:   map[string]*Project{},
		projectRedirects: map[string]int64{},
		members:          map[string]map[int64]int{},
		tokenByHash:      map[string]*token{},
		rateLimit:        defaultRateLimit,
		rateBuckets:      map[int64]*rateBucket{},
		oauthApps:        map[string]*OAuthApplication{},
		deviceByCode:     map[string]*deviceGrant{},
		deviceByUserCode: map[string]*deviceGrant{},
		accessGrants:     map[string]*accessGrant{},
		oauthByAccess:    map[string]*oauthToken{},
		oauthByRefresh:   map[string]*oauthToken{},
	}
	if s.now == nil {
		s.now = time.Now
	}
	gitPath, err := findGit()
	if err != nil {
		return nil, err
	}
	s.gitPath = gitPath
	if opts.RepoRoot == "" {
		dir, err := os.MkdirTemp("", "gitlabfake-repos-")
		if err != nil {
			return nil, fmt.Errorf("gitlabfake: repo root: %w", err)
		}
		s.repoRoot, s.ownRoot = dir, true
	} else {
		if err := os.MkdirAll(opts.RepoRoot, 0o755); err != nil {
			return nil, fmt.Errorf("gitlabfake: repo root: %w", err)
		}
		s.repoRoot = opts.RepoRoot
	}
	if _, err := s.addSigningKeyLocked(); err != nil {
		s.cleanupRoot()
		return nil, err
	}
	s.currentKID = s.keys[0].kid
	// The root user (id 1) is GitLab's first administrator.
	root := s.addUserLocked("root", false)
	root.Admin = true

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		s.cleanupRoot()
		return nil, fmt.Errorf("gitlabfake: listen: %w", err)
	}
	s.ln = ln
	s.url = "http://" + ln.Addr().String()
	if err := s.setupTLS(); err != nil {
		_ = ln.Close()
		s.cleanupRoot()
		return nil, err
	}
	s.srv = &http.Server{
		Handler:           s.middleware(s.routes()),
		ReadHeaderTimeout: 10 * time.Second,
	}
	if s.tls != nil {
		s.srv.ErrorLog = s.tlsErrorLog()
	}
	go func() { _ = s.srv.Serve(s.ln) }()
	return s, nil
}

// TB is the part of testing.TB that Start uses; *testing.T and *testing.B
// satisfy it. The package does not import testing, so the binaries built on
// the stand-in (the demo, gitlab-standin, loadgen) do not link it.
type TB interface {
	Helper()
	Fatalf(format string, args ...any)
	Cleanup(func())
}

// Start is New for tests: it fails tb on error and closes the server in tb.Cleanup.
func Start(tb TB, opts Options) *Server {
	tb.Helper()
	s, err := New(opts)
	if err != nil {
		tb.Fatalf("gitlabfake: %v", err)
	}
	tb.Cleanup(func() { _ = s.Close() })
	return s
}

// URL is the base URL, "http://127.0.0.1:PORT" ("https://HOST" with Options.Host,
// "https://127.0.0.1:PORT" with Options.TLS). It is also the ID-token issuer.
func (s *Server) URL() string { return s.url }

// Close stops the server and removes the repo root if the server created it.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		s.WaitHooks() // deliveries under way end before the stand-in does
		s.closeErr = s.srv.Close()
		if errors.Is(s.closeErr, http.ErrServerClosed) {
			s.closeErr = nil
		}
		s.closeTLS()
		s.cleanupRoot()
	})
	return s.closeErr
}

func (s *Server) cleanupRoot() {
	if s.ownRoot {
		_ = os.RemoveAll(s.repoRoot)
	}
}

// RepoRoot is the directory that holds the bare repositories (<root>/<full path>.git).
func (s *Server) RepoRoot() string { return s.repoRoot }

// RegistryIssuer is the "iss" of registry JWTs: GitLab's default "gitlab-issuer".
func (s *Server) RegistryIssuer() string { return registryIssuer }

// RegistryCertPEM is the certificate of the registry-JWT signing key, for distribution's
// auth.token.rootcertbundle (gitlab-standin writes it to registry-token.pem).
func (s *Server) RegistryCertPEM() []byte {
	if err := s.ensureRegistryKey(); err != nil {
		panic(err)
	}
	return append([]byte(nil), s.registryCert...)
}
