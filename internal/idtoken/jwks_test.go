package idtoken

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwk"
)

func TestKeyRotation(t *testing.T) {
	clk := newClock()
	k1, k2, k3 := newRSAKey(t, "kid-1"), newRSAKey(t, "kid-2"), newRSAKey(t, "kid-3")
	srv := newJWKSServer(t, k1)
	v := newTestVerifier(t, srv, clk)
	claims := gitlabClaims(clk.Now())
	if n := srv.count(); n != 1 {
		t.Fatalf("%d JWKS requests after New; want 1", n)
	}

	// GitLab rotates: kid-2 appears. The first token signed with it triggers one refetch.
	srv.setKeys(t, k1, k2)
	if _, err := v.Verify(t.Context(), mint(t, k2, nil, claims)); err != nil {
		t.Fatalf("Verify with the new key: %v", err)
	}
	if n := srv.count(); n != 2 {
		t.Fatalf("%d JWKS requests after rotation; want 2", n)
	}
	if _, err := v.Verify(t.Context(), mint(t, k1, nil, claims)); err != nil {
		t.Fatalf("Verify with the old key: %v", err)
	}

	// A kid that is nowhere: within the cooldown no further fetch is made.
	if _, err := v.Verify(t.Context(), mint(t, k3, nil, claims)); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("Verify error %v; want ErrUnknownKey", err)
	}
	if n := srv.count(); n != 2 {
		t.Fatalf("%d JWKS requests within the cooldown; want 2", n)
	}

	// After the cooldown one more fetch is allowed; kid-3 is then published.
	clk.Advance(DefaultRefreshCooldown)
	claims = gitlabClaims(clk.Now())
	srv.setKeys(t, k2, k3)
	if _, err := v.Verify(t.Context(), mint(t, k3, nil, claims)); err != nil {
		t.Fatalf("Verify after the cooldown: %v", err)
	}
	if n := srv.count(); n != 3 {
		t.Fatalf("%d JWKS requests after the cooldown; want 3", n)
	}
	// kid-1 left the JWKS with that fetch.
	if _, err := v.Verify(t.Context(), mint(t, k1, nil, claims)); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("Verify with a dropped key: %v; want ErrUnknownKey", err)
	}
	if ok, failed := v.Refreshes(); ok != 3 || failed != 0 {
		t.Errorf("Refreshes() = %d, %d; want 3, 0", ok, failed)
	}
}

func TestRefetchCoalescing(t *testing.T) {
	clk := newClock()
	k1, k2, k3 := newRSAKey(t, "kid-1"), newRSAKey(t, "kid-2"), newRSAKey(t, "kid-3")
	srv := newJWKSServer(t, k1)
	v := newTestVerifier(t, srv, clk)
	claims := gitlabClaims(clk.Now())

	srv.setKeys(t, k1, k2)
	for i, err := range verifyAll(t.Context(), v, mint(t, k2, nil, claims), 100) {
		if err != nil {
			t.Fatalf("verification %d: %v", i, err)
		}
	}
	if n := srv.count(); n != 2 {
		t.Fatalf("%d JWKS requests for 100 concurrent unknown-kid verifications; want 2 (first load + one refetch)", n)
	}

	// An unknown kid within the cooldown: no fetch at all.
	for i, err := range verifyAll(t.Context(), v, mint(t, k3, nil, claims), 100) {
		if !errors.Is(err, ErrUnknownKey) {
			t.Fatalf("verification %d: %v; want ErrUnknownKey", i, err)
		}
	}
	if n := srv.count(); n != 2 {
		t.Fatalf("%d JWKS requests within the cooldown; want 2", n)
	}

	// Just before the cooldown ends: still none. At its end: exactly one.
	clk.Advance(DefaultRefreshCooldown - time.Second)
	verifyAll(t.Context(), v, mint(t, k3, nil, claims), 100)
	if n := srv.count(); n != 2 {
		t.Fatalf("%d JWKS requests 1s before the cooldown ends; want 2", n)
	}
	clk.Advance(time.Second)
	for i, err := range verifyAll(t.Context(), v, mint(t, k3, nil, claims), 100) {
		if !errors.Is(err, ErrUnknownKey) {
			t.Fatalf("verification %d: %v; want ErrUnknownKey", i, err)
		}
	}
	if n := srv.count(); n != 3 {
		t.Fatalf("%d JWKS requests after the cooldown; want 3", n)
	}
}

func TestGitLabDownAfterFirstLoad(t *testing.T) {
	clk := newClock()
	k1, k2 := newRSAKey(t, "kid-1"), newRSAKey(t, "kid-2")
	srv := newJWKSServer(t, k1)
	v := newTestVerifier(t, srv, clk)
	tok := mint(t, k1, nil, gitlabClaims(clk.Now()))

	rsa1024, err := rsa.GenerateKey(rand.Reader, 1024)
	must(t, err)
	weak := &testKey{kid: "weak", alg: "RS256", jwkAlg: "RS256", use: "sig", priv: rsa1024}
	oct, err := jwk.FromRaw([]byte("0123456789abcdef0123456789abcdef"))
	must(t, err)
	must(t, oct.Set(jwk.KeyIDKey, "oct"))
	octSet := jwk.NewSet()
	must(t, octSet.AddKey(oct))
	many := jwk.NewSet()
	for range MaxJWKSKeys + 1 {
		must(t, many.AddKey(k2.publicJWK(t)))
	}
	dup := jwk.NewSet()
	must(t, dup.AddKey(k1.publicJWK(t)))
	must(t, dup.AddKey(k2.publicJWK(t)))
	k2dup := *k2
	k2dup.kid = "kid-1"
	must(t, dup.AddKey(k2dup.publicJWK(t)))

	failures := []struct {
		name  string
		apply func()
	}{
		{"503", srv.down},
		{"404", func() { srv.setBody(http.StatusNotFound, []byte(`{"message":"404 Not Found"}`)) }},
		{"not JSON", func() { srv.setBody(http.StatusOK, []byte("<html>maintenance</html>")) }},
		{"empty key set", func() { srv.setBody(http.StatusOK, []byte(`{"keys":[]}`)) }},
		{"only a too short RSA key", func() { srv.setKeys(t, weak) }},
		{"only a symmetric key", func() { srv.setBody(http.StatusOK, mustJSON(t, octSet)) }},
		{"too many keys", func() { srv.setBody(http.StatusOK, mustJSON(t, many)) }},
		{"duplicate kid", func() { srv.setBody(http.StatusOK, mustJSON(t, dup)) }},
		{"body over 1 MiB", func() {
			srv.setBody(http.StatusOK, []byte(`{"keys":[],"pad":"`+strings.Repeat("x", MaxJWKSBytes)+`"}`))
		}},
	}
	for i, f := range failures {
		t.Run(f.name, func(t *testing.T) {
			f.apply()
			if err := v.Refresh(t.Context()); err == nil {
				t.Fatal("Refresh succeeded; want an error")
			}
			if _, failed := v.Refreshes(); failed != uint64(i+1) {
				t.Errorf("failed refreshes = %d; want %d", failed, i+1)
			}
			if !v.Ready() {
				t.Error("Ready() = false after a failed refresh")
			}
			if _, err := v.Verify(t.Context(), tok); err != nil {
				t.Fatalf("Verify with the last good key set: %v", err)
			}
		})
	}

	// An unknown kid while GitLab is down is an unknown key, not unavailable keys.
	srv.down()
	clk.Advance(DefaultRefreshCooldown)
	_, err = v.Verify(t.Context(), mint(t, k2, nil, gitlabClaims(clk.Now())))
	if !errors.Is(err, ErrUnknownKey) || errors.Is(err, ErrKeysUnavailable) {
		t.Fatalf("Verify error %v; want ErrUnknownKey only", err)
	}
}

func TestGitLabDownFromStart(t *testing.T) {
	clk := newClock()
	k1 := newRSAKey(t, "kid-1")

	t.Run("connection refused", func(t *testing.T) {
		dead := httptest.NewServer(http.NotFoundHandler())
		url := dead.URL
		dead.Close()
		v, err := New(t.Context(), Config{Issuer: testIssuer, JWKSURL: url + DefaultJWKSPath, Audience: testAudience, Now: clk.Now})
		if err != nil {
			t.Fatalf("New must not fail when GitLab is down: %v", err)
		}
		defer v.Close()
		if v.Ready() {
			t.Fatal("Ready() = true with no key set")
		}
		_, err = v.Verify(t.Context(), mint(t, k1, nil, gitlabClaims(clk.Now())))
		if !errors.Is(err, ErrKeysUnavailable) || errors.Is(err, ErrUnknownKey) {
			t.Fatalf("Verify error %v; want ErrKeysUnavailable", err)
		}
	})

	t.Run("503 then recovers", func(t *testing.T) {
		srv := newJWKSServer(t, k1)
		srv.down()
		v := newTestVerifier(t, srv, clk)
		if v.Ready() {
			t.Fatal("Ready() = true with no key set")
		}
		tok := mint(t, k1, nil, gitlabClaims(clk.Now()))
		for range 3 {
			if _, err := v.Verify(t.Context(), tok); !errors.Is(err, ErrKeysUnavailable) {
				t.Fatalf("Verify error %v; want ErrKeysUnavailable", err)
			}
		}
		// First load, then one on-demand try; the other two are within the cooldown.
		if n := srv.count(); n != 2 {
			t.Fatalf("%d JWKS requests; want 2", n)
		}
		srv.setKeys(t, k1)
		clk.Advance(DefaultRefreshCooldown)
		tok = mint(t, k1, nil, gitlabClaims(clk.Now()))
		if _, err := v.Verify(t.Context(), tok); err != nil {
			t.Fatalf("Verify after GitLab recovered: %v", err)
		}
		if !v.Ready() {
			t.Fatal("Ready() = false after a successful fetch")
		}
		if ok, failed := v.Refreshes(); ok != 1 || failed != 2 {
			t.Errorf("Refreshes() = %d, %d; want 1, 2", ok, failed)
		}
	})
}

func TestDroppedKeyStopsVerifying(t *testing.T) {
	clk := newClock()
	k1, k2 := newRSAKey(t, "kid-1"), newRSAKey(t, "kid-2")
	srv := newJWKSServer(t, k1, k2)
	v := newTestVerifier(t, srv, clk)
	claims := gitlabClaims(clk.Now())
	tok1, tok2 := mint(t, k1, nil, claims), mint(t, k2, nil, claims)
	for _, tok := range []string{tok1, tok2} {
		if _, err := v.Verify(t.Context(), tok); err != nil {
			t.Fatal(err)
		}
	}
	srv.setKeys(t, k2)
	if err := v.Refresh(t.Context()); err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(t.Context(), tok1); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("Verify with the dropped key: %v; want ErrUnknownKey", err)
	}
	if _, err := v.Verify(t.Context(), tok2); err != nil {
		t.Fatalf("Verify with the remaining key: %v", err)
	}
}

// TestBackgroundRefresh waits (without a deadline of its own) for the periodic refresh to drop
// a key; with a 1s interval that takes a second or two.
func TestBackgroundRefresh(t *testing.T) {
	clk := newClock()
	k1, k2 := newRSAKey(t, "kid-1"), newRSAKey(t, "kid-2")
	srv := newJWKSServer(t, k1, k2)
	v := newTestVerifier(t, srv, clk, func(c *Config) {
		c.RefreshInterval = time.Second
		c.RefreshCooldown = time.Hour // so that only the background refresh can fetch
	})
	tok1 := mint(t, k1, nil, gitlabClaims(clk.Now()))
	if _, err := v.Verify(t.Context(), tok1); err != nil {
		t.Fatal(err)
	}
	srv.setKeys(t, k2)
	before := srv.count()
	for srv.count() < before+1 {
		time.Sleep(20 * time.Millisecond)
	}
	for {
		_, err := v.Verify(t.Context(), tok1)
		if errors.Is(err, ErrUnknownKey) {
			break
		}
		if err != nil {
			t.Fatalf("Verify: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestJWKSKeyFiltering(t *testing.T) {
	clk := newClock()
	good := newRSAKey(t, "good")
	encKey := newRSAKey(t, "enc")
	encKey.use = "enc"
	rsa1024, err := rsa.GenerateKey(rand.Reader, 1024)
	must(t, err)
	weak := &testKey{kid: "weak", alg: "RS256", jwkAlg: "RS256", use: "sig", priv: rsa1024}

	srv := newJWKSServer(t)
	set := jwk.NewSet()
	for _, k := range []*testKey{good, encKey, weak} {
		must(t, set.AddKey(k.publicJWK(t)))
	}
	oct, err := jwk.FromRaw([]byte("0123456789abcdef0123456789abcdef"))
	must(t, err)
	must(t, oct.Set(jwk.KeyIDKey, "oct"))
	must(t, set.AddKey(oct))
	noKid := newRSAKey(t, "")
	pk, err := jwk.FromRaw(noKid.priv.Public())
	must(t, err)
	must(t, set.AddKey(pk))
	b, err := json.Marshal(set)
	must(t, err)
	srv.setBody(http.StatusOK, b)

	v := newTestVerifier(t, srv, clk)
	claims := gitlabClaims(clk.Now())
	if _, err := v.Verify(t.Context(), mint(t, good, nil, claims)); err != nil {
		t.Fatalf("Verify with the good key: %v", err)
	}
	for _, k := range []*testKey{encKey, weak} {
		if _, err := v.Verify(t.Context(), mint(t, k, nil, claims)); !errors.Is(err, ErrUnknownKey) {
			t.Errorf("Verify with key %q: %v; want ErrUnknownKey", k.kid, err)
		}
	}
	if got := kids(v.keys.Load()); len(got) != 1 || got[0] != "good" {
		t.Errorf("usable kids = %v; want [good]", got)
	}
}

func TestInjectedHTTPClient(t *testing.T) {
	clk := newClock()
	k := newRSAKey(t, "kid-1")
	plain := newJWKSServer(t, k) // reuse its handler behind TLS
	tlsSrv := httptest.NewUnstartedServer(plain.Config.Handler)
	tlsSrv.Config.ErrorLog = log.New(io.Discard, "", 0) // the expected handshake failure
	tlsSrv.StartTLS()
	t.Cleanup(tlsSrv.Close)
	cfg := Config{Issuer: testIssuer, JWKSURL: tlsSrv.URL + DefaultJWKSPath, Audience: testAudience, Now: clk.Now}

	// The default client does not trust the test CA: not ready, and New still succeeds.
	v, err := New(t.Context(), cfg)
	must(t, err)
	defer v.Close()
	if v.Ready() {
		t.Fatal("Ready() with an untrusted certificate")
	}

	cfg.HTTPClient = tlsSrv.Client()
	v2, err := New(t.Context(), cfg)
	must(t, err)
	defer v2.Close()
	if !v2.Ready() {
		t.Fatal("Ready() = false with the injected client")
	}
	if _, err := v2.Verify(t.Context(), mint(t, k, nil, gitlabClaims(clk.Now()))); err != nil {
		t.Fatal(err)
	}
}

func TestVerifyCancelledWhileRefetching(t *testing.T) {
	clk := newClock()
	k1, k2 := newRSAKey(t, "kid-1"), newRSAKey(t, "kid-2")
	srv := newJWKSServer(t, k1)
	v := newTestVerifier(t, srv, clk)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	_, err := v.Verify(ctx, mint(t, k2, nil, gitlabClaims(clk.Now())))
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Verify error %v; want context.Canceled", err)
	}
}

// TestInjectedClientDoesNotFollowCrossOriginRedirects: even with a caller's
// client that follows any redirect, a JWKS redirected to another origin is
// not loaded.
func TestInjectedClientDoesNotFollowCrossOriginRedirects(t *testing.T) {
	evil := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t.Error("the verifier followed a redirect to another origin")
	}))
	defer evil.Close()
	gl := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, evil.URL+"/keys", http.StatusMovedPermanently)
	}))
	defer gl.Close()
	v, err := New(context.Background(), Config{Issuer: gl.URL, Audience: "aud", HTTPClient: &http.Client{}})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	if v.Ready() {
		t.Fatal("keys loaded through a cross-origin redirect")
	}
}
