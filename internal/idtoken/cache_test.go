package idtoken

import (
	"errors"
	"fmt"
	"testing"
	"time"
)

func TestVerificationCache(t *testing.T) {
	clk := newClock()
	k := newRSAKey(t, "kid-1")
	v := newTestVerifier(t, newJWKSServer(t, k), clk)
	raw := mint(t, k, nil, gitlabClaims(clk.Now())) // exp = now + 300s
	first, err := v.Verify(t.Context(), raw)
	if err != nil {
		t.Fatal(err)
	}
	first.Claims["project_path"] = "changed/by/caller"
	clk.Advance(299 * time.Second)
	again, err := v.Verify(t.Context(), raw)
	if err != nil {
		t.Fatal(err)
	}
	if hits, misses := v.CacheStats(); hits != 1 || misses != 1 {
		t.Fatalf("hits %d misses %d, want the second Verify from the cache", hits, misses)
	}
	if again.Claims["project_path"] != "platform/app" {
		t.Fatalf("a caller changed the cached token: %q", again.Claims["project_path"])
	}
	// At exp the cache no longer answers: the full check runs (and, within
	// the leeway, still accepts).
	clk.Advance(time.Second)
	if _, err := v.Verify(t.Context(), raw); err != nil {
		t.Fatalf("at exp, within the leeway: %v", err)
	}
	if hits, _ := v.CacheStats(); hits != 1 {
		t.Fatalf("the cache answered at exp (hits %d)", hits)
	}
	clk.Advance(DefaultLeeway + time.Second)
	if _, err := v.Verify(t.Context(), raw); !errors.Is(err, ErrExpired) {
		t.Fatalf("after exp and the leeway: %v, want ErrExpired", err)
	}
}

func TestVerificationCacheDropsRemovedKeys(t *testing.T) {
	clk := newClock()
	k1, k2 := newRSAKey(t, "kid-1"), newRSAKey(t, "kid-2")
	srv := newJWKSServer(t, k1, k2)
	v := newTestVerifier(t, srv, clk)
	tok1, tok2 := mint(t, k1, nil, gitlabClaims(clk.Now())), mint(t, k2, nil, gitlabClaims(clk.Now()))
	for _, tok := range []string{tok1, tok2} {
		if _, err := v.Verify(t.Context(), tok); err != nil {
			t.Fatal(err)
		}
	}
	srv.setKeys(t, k2)
	if err := v.Refresh(t.Context()); err != nil {
		t.Fatal(err)
	}
	if n := v.verified.len(); n != 1 {
		t.Fatalf("%d cached tokens after kid-1 left the key set, want 1", n)
	}
	if _, err := v.Verify(t.Context(), tok1); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("token of the dropped key: %v, want ErrUnknownKey", err)
	}
	if _, err := v.Verify(t.Context(), tok2); err != nil {
		t.Fatal(err)
	}

	// GitLab reuses a kid for another key: the cached token is not trusted.
	k2b := newRSAKey(t, "kid-2")
	srv.setKeys(t, k2b)
	if err := v.Refresh(t.Context()); err != nil {
		t.Fatal(err)
	}
	hits, _ := v.CacheStats()
	if _, err := v.Verify(t.Context(), tok2); !errors.Is(err, ErrSignature) {
		t.Fatalf("token signed by the kid's old key: %v, want ErrSignature", err)
	}
	if h, _ := v.CacheStats(); h != hits {
		t.Fatal("the cache answered for a key that changed under its kid")
	}
}

func TestVerificationCacheBound(t *testing.T) {
	clk := newClock()
	k := newRSAKey(t, "kid-1")
	v := newTestVerifier(t, newJWKSServer(t, k), clk, func(c *Config) { c.CacheSize = 3 })
	var toks []string
	for i := range 5 {
		toks = append(toks, mint(t, k, nil, with(gitlabClaims(clk.Now()), map[string]any{"jti": fmt.Sprint("job-", i)})))
		if _, err := v.Verify(t.Context(), toks[i]); err != nil {
			t.Fatal(err)
		}
	}
	if n := v.verified.len(); n != 3 {
		t.Fatalf("cache holds %d tokens, want its bound 3", n)
	}
	// The least recently used went first: 0 and 1.
	for _, c := range []struct {
		i      int
		cached bool
	}{{4, true}, {3, true}, {2, true}, {0, false}} {
		hits, _ := v.CacheStats()
		if _, err := v.Verify(t.Context(), toks[c.i]); err != nil {
			t.Fatal(err)
		}
		if h, _ := v.CacheStats(); (h > hits) != c.cached {
			t.Errorf("token %d from the cache: %v, want %v", c.i, h > hits, c.cached)
		}
	}

	off := newTestVerifier(t, newJWKSServer(t, k), clk, func(c *Config) { c.CacheSize = -1 })
	for range 2 {
		if _, err := off.Verify(t.Context(), toks[0]); err != nil {
			t.Fatal(err)
		}
	}
	if hits, _ := off.CacheStats(); hits != 0 {
		t.Fatalf("a disabled cache answered %d times", hits)
	}
}

// BenchmarkVerifyCached is a token verified before (the job's next repository).
func BenchmarkVerifyCached(b *testing.B) {
	clk := newClock()
	k := newRSAKey(b, "kid-1")
	v := newTestVerifier(b, newJWKSServer(b, k), clk)
	raw := mint(b, k, nil, gitlabClaims(clk.Now()))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := v.Verify(b.Context(), raw); err != nil {
			b.Fatal(err)
		}
	}
}
