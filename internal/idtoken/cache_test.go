package idtoken

import (
	"errors"
	"fmt"
	"reflect"
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

// TestPackedTokenRoundTrip: the cache's packed form gives back exactly the
// verified token, a fresh copy each time, and tokens with the same claim
// names share one interned name list.
func TestPackedTokenRoundTrip(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	tokens := []*Token{
		{Issuer: "https://gitlab.example.com", Subject: "project_path:platform/app:ref_type:branch:ref:main", ID: "jti-1",
			Audience: []string{"https://gltoken.example.com", "other"}, IssuedAt: now, NotBefore: now, Expiry: now.Add(time.Hour),
			Claims:     map[string]string{"iss": "https://gitlab.example.com", "project_path": "platform/app", "job_id": "42", "empty": ""},
			ClaimLists: map[string][]string{"groups_direct": {"platform", "tools"}}, KeyID: "kid-1"},
		{Issuer: "https://gitlab.example.com", Subject: "s", ID: "", IssuedAt: now, Expiry: now.Add(time.Minute),
			Claims: map[string]string{"iss": "https://gitlab.example.com", "project_path": "platform/lib", "job_id": "43", "empty": "x"}},
		{Claims: map[string]string{}},
	}
	c := newVerifiedCache(10)
	var packed []packedToken
	for _, tok := range tokens {
		p := c.pack(tok)
		packed = append(packed, p)
		got := p.unpack()
		if !reflect.DeepEqual(got, tok) {
			t.Errorf("unpacked\n%+v\nwant\n%+v", got, tok)
		}
		got.Claims["project_path"] = "changed"
		if p.unpack().Claims["project_path"] == "changed" {
			t.Error("a change to an unpacked token reached the cache")
		}
		if got.ClaimLists != nil {
			got.ClaimLists["groups_direct"][0] = "changed"
			if p.unpack().ClaimLists["groups_direct"][0] == "changed" {
				t.Error("a change to an unpacked token's lists reached the cache")
			}
		}
	}
	if &packed[0].names[0] != &packed[1].names[0] {
		t.Error("two tokens with the same claim names keep two name lists")
	}
}
