// Package idtoken verifies GitLab CI/CD ID tokens: JWTs that GitLab signs for each job with a key
// it publishes at {gitlab}/oauth/discovery/keys.
//
// The entry point is [New], which validates a [Config] and starts an auto-refreshing cache of the
// instance's JWKS; [Verifier.Verify] then checks a presented token (size, structure, header,
// algorithm, signature, issuer, audience, times and the types of GitLab's claims) and returns a
// [Token] whose claims are normalised to strings for policy matching. Every failure wraps one of
// the package's sentinel errors (ErrExpired, ErrAudience, …) so callers can branch with errors.Is.
//
// The verifier never takes a key source from the token: keys come only from Config.JWKSURL, and
// a token whose header names a key (jku, x5u, jwk, x5c) or demands extensions (crit) is refused.
// Keys are fetched at most once per Config.RefreshCooldown on behalf of tokens with an unknown
// kid (concurrent callers share the fetch), refreshed in the background every
// Config.RefreshInterval, and only ever replaced by a successfully fetched, non-empty set: while
// GitLab is unreachable the last good set keeps working.
//
// For the API: ErrKeysUnavailable means the token could not be judged (503
// temporarily_unavailable); every other error means the token is not acceptable (400
// invalid_grant). Error texts never contain the token; log it only as fingerprint.Of(token).
package idtoken

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/lestrrat-go/jwx/v2/jwk"
	"golang.org/x/sync/singleflight"

	"gltoken.dev/gltoken/internal/loopback"
)

// Sentinel errors. Verify wraps exactly the ones that apply, with detail that never includes the
// raw token (only non-secret facts such as the iss or aud seen, the kid and the alg).
var (
	ErrMalformed       = errors.New("malformed token")
	ErrTooLarge        = errors.New("token too large")
	ErrAlgorithm       = errors.New("algorithm not accepted")
	ErrForbiddenHeader = errors.New("forbidden header parameter")
	ErrUnknownKey      = errors.New("unknown signing key")
	ErrSignature       = errors.New("invalid signature")
	ErrExpired         = errors.New("token expired")
	ErrNotYetValid     = errors.New("token not yet valid")
	ErrIssuedInFuture  = errors.New("token issued in the future")
	ErrIssuer          = errors.New("issuer not accepted")
	ErrAudience        = errors.New("audience not accepted")
	ErrMissingClaim    = errors.New("required claim missing")
	// ErrKeysUnavailable means no key set could ever be loaded (GitLab unreachable since start):
	// the token could not be judged at all, so the API should answer 503, not 400.
	ErrKeysUnavailable = errors.New("signing keys unavailable")
)

// Defaults and hard limits.
const (
	DefaultJWKSPath        = "/oauth/discovery/keys"
	DefaultLeeway          = 60 * time.Second
	MaxLeeway              = 60 * time.Second
	DefaultRefreshCooldown = 30 * time.Second
	DefaultRefreshInterval = 5 * time.Minute
	MinRefreshInterval     = time.Second
	DefaultMaxTokenBytes   = 16 << 10

	// MaxJWKSBytes bounds a JWKS response body; a larger one is a failed fetch.
	MaxJWKSBytes = 1 << 20
	// MaxJWKSKeys bounds the number of keys in a JWKS; a larger set is a failed fetch.
	MaxJWKSKeys = 64
	// FetchTimeout bounds one JWKS fetch, whatever the injected client's own timeout.
	FetchTimeout = 10 * time.Second
	// minRSABits: shorter RSA keys in the JWKS are ignored.
	minRSABits = 2048
)

// supportedAlgs are the asymmetric JWS algorithms Config.Algorithms may name.
var supportedAlgs = []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}

// Config configures a Verifier. Zero values take the documented defaults.
type Config struct {
	// Issuer is the exact "iss" GitLab puts in its ID tokens: the instance URL as GitLab knows it
	// (gitlab.url, or ci_id_tokens.issuer_url when an admin set it), e.g. https://gitlab.example.com.
	// It is compared byte for byte, with no normalisation. GitLab never emits a trailing slash, so
	// an Issuer ending in "/" is a configuration error rather than a silent mismatch.
	Issuer string
	// JWKSURL is where the keys are fetched; default Issuer + "/oauth/discovery/keys".
	// It is NEVER taken from a token. It must be https (keys fetched over plain http could be
	// swapped by anyone on the path), except to a loopback host or with InsecureAllowHTTPJWKS.
	JWKSURL string
	// InsecureAllowHTTPJWKS allows an http JWKSURL to a non-loopback host. It MUST NOT be set
	// outside an isolated lab: whoever can alter the JWKS response can mint accepted tokens.
	InsecureAllowHTTPJWKS bool
	// Audience MUST be contained in the token's "aud" (a string or an array of strings).
	Audience string
	// Algorithms lists the accepted "alg" values; default ["RS256"] (the only one GitLab uses).
	// Only asymmetric algorithms (RS*, PS*, ES*, EdDSA) are allowed; "none" and HS* are errors.
	Algorithms []string
	// Leeway is the clock skew tolerated for exp, nbf and iat; 0 means 60s; more than 60s or
	// negative is an error.
	Leeway time.Duration
	// RefreshCooldown is the minimum time between two JWKS fetches triggered by tokens with an
	// unknown kid (or by tokens arriving while no key set is loaded); default 30s.
	RefreshCooldown time.Duration
	// RefreshInterval is the period of the background refresh; default 5m (GitLab sends
	// max-age=86400; refreshing sooner makes a key rotation or removal visible). Minimum 1s.
	RefreshInterval time.Duration
	// MaxTokenBytes bounds the raw token checked before any parsing; default 16 KiB.
	MaxTokenBytes int
	// HTTPClient fetches the JWKS; default a client with timeouts. Each fetch is in any case
	// bounded by FetchTimeout and MaxJWKSBytes.
	HTTPClient *http.Client
	// Now is the clock for exp/nbf/iat and for the refetch cooldown; default time.Now.
	Now func() time.Time
	// Logger receives fetch failures and key-set changes (never a token); default discards.
	Logger *slog.Logger
	// CacheSize bounds how many verified tokens are remembered (by SHA-256) until their exp,
	// so that a job's token is verified once, not once per repository; default
	// DefaultCacheSize, negative disables the cache.
	CacheSize int
}

// Token is a verified ID token.
type Token struct {
	Issuer, Subject, ID string
	Audience            []string
	IssuedAt, NotBefore time.Time // NotBefore is zero when the token has no nbf
	Expiry              time.Time
	// Claims holds every scalar claim in string form: strings as they are, numbers in decimal
	// (runner_id "42", iat "1700000000"), booleans "true"/"false". The registered claims iss,
	// sub, jti, iat, nbf and exp are included; aud is not (see Audience). Claims whose value is
	// null are omitted. Arrays and objects are never in Claims: arrays of strings (groups_direct)
	// are in ClaimLists, anything else (user_identities) is dropped.
	Claims map[string]string
	// ClaimLists holds the claims whose value is an array of strings, e.g. groups_direct.
	ClaimLists map[string][]string
	// KeyID is the kid of the JWKS key that verified the signature.
	KeyID string
}

// Verifier verifies ID tokens against one GitLab instance. It is safe for concurrent use.
type Verifier struct {
	issuer, jwksURL, audience string
	algs                      []string
	leeway, cooldown          time.Duration
	maxTokenBytes             int
	now                       func() time.Time
	log                       *slog.Logger

	parser *jwt.Parser
	client *jwksClient
	cache  *jwk.Cache      // background refresh only; see startCache
	ctx    context.Context // lifetime of the background refresher
	cancel context.CancelFunc

	keys atomic.Pointer[keySet] // last good key set; nil until one has loaded

	flight       singleflight.Group
	mu           sync.Mutex
	lastOnDemand time.Time // last fetch triggered by Verify (unknown kid or no keys yet)

	refreshOK, refreshFailed atomic.Uint64

	verified               *verifiedCache // nil: no cache
	cacheHits, cacheMisses atomic.Uint64
}

// New validates cfg, starts the JWKS cache and tries a first fetch. A failed first fetch is
// logged, not returned: the daemon must start and report not-ready (Ready() == false) until
// GitLab answers; meanwhile New keeps retrying in the background every RefreshCooldown, and
// Verify returns ErrKeysUnavailable. The first fetch may take up to FetchTimeout.
//
// ctx bounds the life of the background refresher; Close stops it too.
func New(ctx context.Context, cfg Config) (*Verifier, error) {
	v, err := newVerifier(cfg)
	if err != nil {
		return nil, err
	}
	v.ctx, v.cancel = context.WithCancel(ctx)

	client := defaultHTTPClient()
	if cfg.HTTPClient != nil {
		c := *cfg.HTTPClient // a copy: the caller's client keeps its own rules
		c.CheckRedirect = sameOrigin
		client = &c
	}
	window := min(cfg.RefreshInterval, time.Minute)
	v.cache = jwk.NewCache(v.ctx,
		jwk.WithRefreshWindow(window),
		jwk.WithErrSink(errSink(v.backgroundFailure)),
	)
	v.client = &jwksClient{ctx: v.ctx, client: client}
	err = v.cache.Register(v.jwksURL,
		jwk.WithHTTPClient(v.client),
		jwk.WithRefreshInterval(cfg.RefreshInterval),
		jwk.WithPostFetcher(jwk.PostFetchFunc(v.install)),
	)
	if err != nil {
		v.cancel()
		return nil, fmt.Errorf("idtoken: register JWKS %s: %w", v.jwksURL, err)
	}
	if err := v.startCache(ctx); err != nil {
		go v.retryUntilLoaded()
	}
	return v, nil
}

// newVerifier validates cfg and fills in defaults, without any I/O.
func newVerifier(cfg Config) (*Verifier, error) {
	if err := normalise(&cfg); err != nil {
		return nil, fmt.Errorf("idtoken: config: %w", err)
	}
	v := &Verifier{
		issuer:        cfg.Issuer,
		jwksURL:       cfg.JWKSURL,
		audience:      cfg.Audience,
		algs:          cfg.Algorithms,
		leeway:        cfg.Leeway,
		cooldown:      cfg.RefreshCooldown,
		maxTokenBytes: cfg.MaxTokenBytes,
		now:           cfg.Now,
		log:           cfg.Logger,
	}
	if cfg.CacheSize > 0 {
		v.verified = newVerifiedCache(cfg.CacheSize)
	}
	v.parser = jwt.NewParser(
		jwt.WithValidMethods(v.algs),
		jwt.WithStrictDecoding(),
		jwt.WithIssuer(v.issuer),
		jwt.WithAudience(v.audience),
		jwt.WithExpirationRequired(),
		jwt.WithIssuedAt(),
		jwt.WithLeeway(v.leeway),
		jwt.WithTimeFunc(v.now),
	)
	return v, nil
}

func normalise(cfg *Config) error {
	if cfg.Issuer == "" {
		return errors.New("issuer is required")
	}
	if err := checkURL(cfg.Issuer); err != nil {
		return fmt.Errorf("issuer %q: %w", cfg.Issuer, err)
	}
	if strings.HasSuffix(cfg.Issuer, "/") {
		return fmt.Errorf("issuer %q must not end with a slash (GitLab's iss never does)", cfg.Issuer)
	}
	if cfg.JWKSURL == "" {
		cfg.JWKSURL = cfg.Issuer + DefaultJWKSPath
	}
	if err := checkURL(cfg.JWKSURL); err != nil {
		return fmt.Errorf("JWKS URL %q: %w", cfg.JWKSURL, err)
	}
	if u, _ := url.Parse(cfg.JWKSURL); u.Scheme == "http" && !loopback.Host(u.Hostname()) && !cfg.InsecureAllowHTTPJWKS {
		return fmt.Errorf("JWKS URL %q: plain http is only allowed to a loopback host", cfg.JWKSURL)
	}
	if cfg.Audience == "" {
		return errors.New("audience is required")
	}
	if len(cfg.Algorithms) == 0 {
		cfg.Algorithms = []string{"RS256"}
	}
	var algs []string
	for _, a := range cfg.Algorithms {
		if !slices.Contains(supportedAlgs, a) {
			return fmt.Errorf("algorithm %q not allowed: only asymmetric %v", a, supportedAlgs)
		}
		if !slices.Contains(algs, a) {
			algs = append(algs, a)
		}
	}
	cfg.Algorithms = algs
	switch {
	case cfg.Leeway < 0:
		return fmt.Errorf("leeway %s is negative", cfg.Leeway)
	case cfg.Leeway > MaxLeeway:
		return fmt.Errorf("leeway %s exceeds %s", cfg.Leeway, MaxLeeway)
	case cfg.Leeway == 0:
		cfg.Leeway = DefaultLeeway
	}
	switch {
	case cfg.RefreshCooldown < 0:
		return fmt.Errorf("refresh cooldown %s is negative", cfg.RefreshCooldown)
	case cfg.RefreshCooldown == 0:
		cfg.RefreshCooldown = DefaultRefreshCooldown
	}
	switch {
	case cfg.RefreshInterval == 0:
		cfg.RefreshInterval = DefaultRefreshInterval
	case cfg.RefreshInterval < MinRefreshInterval:
		return fmt.Errorf("refresh interval %s is below %s", cfg.RefreshInterval, MinRefreshInterval)
	}
	switch {
	case cfg.MaxTokenBytes < 0:
		return fmt.Errorf("max token bytes %d is negative", cfg.MaxTokenBytes)
	case cfg.MaxTokenBytes == 0:
		cfg.MaxTokenBytes = DefaultMaxTokenBytes
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.CacheSize == 0 {
		cfg.CacheSize = DefaultCacheSize
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

func checkURL(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return err
	}
	if u.Scheme != "https" && u.Scheme != "http" {
		return errors.New("scheme must be https or http")
	}
	if u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "" {
		return errors.New("must be an absolute URL with a host and no userinfo, query or fragment")
	}
	return nil
}

// Close stops the background refresher. Verify keeps using the last key set.
func (v *Verifier) Close() { v.cancel() }

// Ready reports whether a key set has been loaded at least once.
func (v *Verifier) Ready() bool { return v.keys.Load() != nil }

// Refreshes returns how many JWKS fetches succeeded (and installed a key set) and failed since
// New, counting the first fetch, background refreshes, forced refreshes and unknown-kid refetches.
// A metrics collector reads it at scrape time (e.g. with prometheus.NewCounterFunc).
func (v *Verifier) Refreshes() (ok, failed uint64) {
	return v.refreshOK.Load(), v.refreshFailed.Load()
}

// Refresh fetches the JWKS now, ignoring the cooldown (e.g. on SIGHUP). On failure the last good
// key set stays in use.
func (v *Verifier) Refresh(ctx context.Context) error { return v.fetch(ctx) }

// Verify checks raw and returns the verified token. Each failure wraps the sentinel errors that
// apply; see the package documentation. When ctx ends while Verify waits for a JWKS refetch,
// the error wraps ctx.Err() instead.
func (v *Verifier) Verify(ctx context.Context, raw string) (*Token, error) {
	if len(raw) > v.maxTokenBytes {
		return nil, fmt.Errorf("%w: %d bytes exceeds %d", ErrTooLarge, len(raw), v.maxTokenBytes)
	}
	var sum [sha256.Size]byte
	if v.verified != nil {
		sum = sha256.Sum256([]byte(raw))
		if tok, ok := v.verified.get(sum, v.now(), v.keys.Load()); ok {
			v.cacheHits.Add(1)
			return tok, nil
		}
		v.cacheMisses.Add(1)
	}
	hdr, err := checkStructure(raw, v.algs)
	if err != nil {
		return nil, err
	}

	// The key lookup's own error is kept apart so that it reaches the caller unwrapped by jwt.
	var keyErr error
	var pub any
	keyfunc := func(t *jwt.Token) (any, error) {
		if t.Method == nil || t.Method.Alg() != hdr.alg {
			// Cannot happen (same bytes, duplicates refused); refuse rather than trust either.
			keyErr = fmt.Errorf("%w: header parsed inconsistently", ErrMalformed)
			return nil, keyErr
		}
		k, err := v.key(ctx, hdr.alg, hdr.kid)
		keyErr, pub = err, k
		return k, err
	}
	claims := &claimSet{}
	_, err = v.parser.ParseWithClaims(raw, claims, keyfunc)
	if err != nil {
		if keyErr != nil {
			return nil, keyErr
		}
		return nil, v.mapError(err, hdr, claims)
	}
	tok := claims.token(hdr.kid)
	if v.verified != nil {
		v.verified.put(sum, tok, pub)
	}
	return tok, nil
}

// CacheStats returns how many verifications were answered from the cache of
// verified tokens and how many were not (a metrics collector reads them).
func (v *Verifier) CacheStats() (hits, misses uint64) {
	return v.cacheHits.Load(), v.cacheMisses.Load()
}

// mapError turns a jwt/v5 error into the package's sentinels. Claim validation may fail on
// several counts at once; every applicable sentinel is wrapped.
func (v *Verifier) mapError(err error, hdr header, c *claimSet) error {
	switch {
	case c.decodeErr != nil:
		return c.decodeErr
	case errors.Is(err, jwt.ErrTokenMalformed):
		return fmt.Errorf("%w: %s", ErrMalformed, strings.TrimPrefix(err.Error(), jwt.ErrTokenMalformed.Error()+": "))
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		return fmt.Errorf("%w: kid %s alg %s", ErrSignature, quote(hdr.kid), hdr.alg)
	case !errors.Is(err, jwt.ErrTokenInvalidClaims):
		return fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	var errs []error
	var details []string
	add := func(sentinel error, detail string) {
		errs = append(errs, sentinel)
		details = append(details, detail)
	}
	if errors.Is(err, ErrMissingClaim) || errors.Is(err, jwt.ErrTokenRequiredClaimMissing) {
		add(ErrMissingClaim, "missing "+strings.Join(c.missing(), ", "))
	}
	if errors.Is(err, jwt.ErrTokenInvalidIssuer) {
		add(ErrIssuer, fmt.Sprintf("iss %s, want %q", quote(c.iss), v.issuer))
	}
	if errors.Is(err, jwt.ErrTokenInvalidAudience) {
		add(ErrAudience, fmt.Sprintf("aud %s does not contain %q", quoteList(c.aud), v.audience))
	}
	now := v.now()
	if errors.Is(err, jwt.ErrTokenExpired) {
		add(ErrExpired, fmt.Sprintf("exp %s is before now %s (leeway %s)", stamp(c.exp), stamp(now), v.leeway))
	}
	if errors.Is(err, jwt.ErrTokenNotValidYet) {
		add(ErrNotYetValid, fmt.Sprintf("nbf %s is after now %s (leeway %s)", stamp(c.nbf), stamp(now), v.leeway))
	}
	if errors.Is(err, jwt.ErrTokenUsedBeforeIssued) {
		add(ErrIssuedInFuture, fmt.Sprintf("iat %s is after now %s (leeway %s)", stamp(c.iat), stamp(now), v.leeway))
	}
	if len(errs) == 0 {
		return fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	return &claimsError{errs: errs, msg: strings.Join(details, "; ")}
}

// claimsError carries every claim check that failed; errors.Is matches each of them.
type claimsError struct {
	errs []error
	msg  string
}

func (e *claimsError) Error() string {
	names := make([]string, len(e.errs))
	for i, err := range e.errs {
		names[i] = err.Error()
	}
	return strings.Join(names, ", ") + ": " + e.msg
}

func (e *claimsError) Unwrap() []error { return e.errs }

func stamp(t time.Time) string {
	if t.IsZero() {
		return "(none)"
	}
	return t.UTC().Format(time.RFC3339)
}

// quote renders an attacker-controlled string for an error message: quoted (so control
// characters are escaped) and truncated.
func quote(s string) string {
	const max = 128
	if len(s) > max {
		return fmt.Sprintf("%q…", s[:max])
	}
	return fmt.Sprintf("%q", s)
}

func quoteList(ss []string) string {
	const max = 8
	parts := make([]string, 0, min(len(ss), max)+1)
	for i, s := range ss {
		if i == max {
			parts = append(parts, "…")
			break
		}
		parts = append(parts, quote(s))
	}
	return "[" + strings.Join(parts, " ") + "]"
}
