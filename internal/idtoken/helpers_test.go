package idtoken

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/lestrrat-go/jwx/v2/jwk"
)

const (
	testIssuer   = "https://gitlab.example.com"
	testAudience = "https://gltoken.example.com"
)

// testKey is a signing key and how the test JWKS publishes it.
type testKey struct {
	kid    string
	alg    string // token alg used by mint
	jwkAlg string // "alg" in the JWKS ("" to leave it out)
	use    string // "use" in the JWKS ("" to leave it out)
	priv   crypto.Signer
}

func newRSAKey(tb testing.TB, kid string) *testKey {
	tb.Helper()
	priv, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		tb.Fatal(err)
	}
	return &testKey{kid: kid, alg: "RS256", jwkAlg: "RS256", use: "sig", priv: priv}
}

func newECKey(tb testing.TB, kid string) *testKey {
	tb.Helper()
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	return &testKey{kid: kid, alg: "ES256", jwkAlg: "ES256", use: "sig", priv: priv}
}

func (k *testKey) publicJWK(tb testing.TB) jwk.Key {
	tb.Helper()
	pk, err := jwk.FromRaw(k.priv.Public())
	if err != nil {
		tb.Fatal(err)
	}
	must(tb, pk.Set(jwk.KeyIDKey, k.kid))
	if k.jwkAlg != "" {
		must(tb, pk.Set(jwk.AlgorithmKey, k.jwkAlg))
	}
	if k.use != "" {
		must(tb, pk.Set(jwk.KeyUsageKey, k.use))
	}
	return pk
}

func must(tb testing.TB, err error) {
	tb.Helper()
	if err != nil {
		tb.Fatal(err)
	}
}

// jwksServer is a stand-in for GitLab's /oauth/discovery/keys that counts its requests.
type jwksServer struct {
	*httptest.Server
	mu       sync.Mutex
	body     []byte
	status   int
	requests atomic.Int64
}

func newJWKSServer(tb testing.TB, keys ...*testKey) *jwksServer {
	tb.Helper()
	s := &jwksServer{status: http.StatusOK}
	s.setKeys(tb, keys...)
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != DefaultJWKSPath {
			http.Error(w, "not implemented", http.StatusNotImplemented)
			return
		}
		s.requests.Add(1)
		s.mu.Lock()
		status, body := s.status, s.body
		s.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "max-age=86400, public, must-revalidate, no-transform")
		w.WriteHeader(status)
		_, _ = w.Write(body)
	}))
	tb.Cleanup(s.Close)
	return s
}

func (s *jwksServer) setKeys(tb testing.TB, keys ...*testKey) {
	tb.Helper()
	set := jwk.NewSet()
	for _, k := range keys {
		must(tb, set.AddKey(k.publicJWK(tb)))
	}
	b, err := json.Marshal(set)
	must(tb, err)
	s.setBody(http.StatusOK, b)
}

func (s *jwksServer) setBody(status int, body []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.status, s.body = status, body
}

func (s *jwksServer) down() {
	s.setBody(http.StatusServiceUnavailable, []byte("GitLab is not responding"))
}

func (s *jwksServer) jwksURL() string { return s.URL + DefaultJWKSPath }

func (s *jwksServer) count() int64 { return s.requests.Load() }

// clock is an injected, manually advanced clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func newTestVerifier(tb testing.TB, srv *jwksServer, clk *clock, mods ...func(*Config)) *Verifier {
	tb.Helper()
	cfg := Config{
		Issuer:   testIssuer,
		JWKSURL:  srv.jwksURL(),
		Audience: testAudience,
		Now:      clk.Now,
	}
	for _, m := range mods {
		m(&cfg)
	}
	v, err := New(tb.Context(), cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(v.Close)
	return v
}

// gitlabClaims is a payload shaped like GitLab's (lib/gitlab/ci/jwt.rb, jwt_v2.rb).
func gitlabClaims(now time.Time) map[string]any {
	return map[string]any{
		"iss":                testIssuer,
		"sub":                "project_path:platform/app:ref_type:branch:ref:main",
		"aud":                testAudience,
		"jti":                "0b5e3bb8-1f6d-4d4b-9b9f-4c7f0d7c8a11",
		"iat":                now.Unix(),
		"nbf":                now.Unix() - 5,
		"exp":                now.Unix() + 300,
		"namespace_id":       "10",
		"namespace_path":     "platform",
		"project_id":         "7",
		"project_path":       "platform/app",
		"user_id":            "1",
		"user_login":         "root",
		"user_email":         "admin@example.com",
		"user_access_level":  "owner",
		"pipeline_id":        "12",
		"pipeline_source":    "push",
		"job_id":             "23",
		"ref":                "main",
		"ref_type":           "branch",
		"ref_path":           "refs/heads/main",
		"ref_protected":      "true",
		"runner_id":          42,
		"runner_environment": "self-hosted",
		"sha":                "5f2c0f6d8f0b5e1c2b9c7a3e4d5f6a7b8c9d0e1f",
		"project_visibility": "private",
		"groups_direct":      []string{"platform", "platform/tools"},
		"user_identities":    []map[string]string{{"provider": "github", "extern_uid": "1"}},
	}
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

// mintRaw signs exactly the given header and payload bytes with k under alg.
func mintRaw(tb testing.TB, alg string, key any, header, payload []byte) string {
	tb.Helper()
	signing := b64(header) + "." + b64(payload)
	sig, err := jwt.GetSigningMethod(alg).Sign(signing, key)
	if err != nil {
		tb.Fatal(err)
	}
	return signing + "." + b64(sig)
}

// mint signs claims with k; hdr entries override (nil value: remove) the default header
// {"alg": k.alg, "kid": k.kid, "typ": "JWT"}.
func mint(tb testing.TB, k *testKey, hdr map[string]any, claims map[string]any) string {
	tb.Helper()
	h := map[string]any{"alg": k.alg, "kid": k.kid, "typ": "JWT"}
	for name, val := range hdr {
		if val == nil {
			delete(h, name)
			continue
		}
		h[name] = val
	}
	hb, err := json.Marshal(h)
	must(tb, err)
	pb, err := json.Marshal(claims)
	must(tb, err)
	return mintRaw(tb, h["alg"].(string), k.priv, hb, pb)
}

// with returns a copy of claims with the given changes (nil value: remove).
func with(claims map[string]any, changes map[string]any) map[string]any {
	out := make(map[string]any, len(claims))
	for k, v := range claims {
		out[k] = v
	}
	for k, v := range changes {
		if v == nil {
			delete(out, k)
			continue
		}
		out[k] = v
	}
	return out
}

// verifyAll runs n verifications of tok concurrently and returns their errors.
func verifyAll(ctx context.Context, v *Verifier, tok string, n int) []error {
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			_, errs[i] = v.Verify(ctx, tok)
		})
	}
	wg.Wait()
	return errs
}
