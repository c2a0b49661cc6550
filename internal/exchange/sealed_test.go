package exchange

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"gltoken.dev/gltoken/internal/policy"
	"gltoken.dev/gltoken/internal/seal"
)

// keyLines returns key file lines with one random key per id.
func keyLines(ids ...string) string {
	var text string
	for _, id := range ids {
		text += fmt.Sprintf("%s %s\n", id, base64.StdEncoding.EncodeToString([]byte(rand.Text() + rand.Text())[:seal.KeySize]))
	}
	return text
}

func parseKeys(t *testing.T, text string) *seal.Keyring {
	t.Helper()
	k, err := seal.Parse([]byte(text))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// keyring returns a key file's keys with one random key per id.
func keyring(t *testing.T, ids ...string) *seal.Keyring { return parseKeys(t, keyLines(ids...)) }

// restart builds another Service on the fixture's store, minter, verifier
// and clock: a restarted daemon (or another replica), with an empty cache.
func (f *fixture) restart(t *testing.T, sealer Sealer) *Service {
	t.Helper()
	pol, err := policy.Parse([]byte(testPolicy), "policy.yaml", policy.Options{GitLabURL: "https://gitlab.example.com"})
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{GitLabURL: "https://gitlab.example.com", RegistryURL: "https://registry.example.com",
		MaxTTL: 12 * time.Hour, Now: f.clock.Now, Logger: slog.New(slog.DiscardHandler)}
	if sealer != nil {
		cfg.Sealer = sealer
	}
	svc, err := New(cfg, f.ver, func() *policy.Policy { return pol }, f.minter, f.store)
	if err != nil {
		t.Fatal(err)
	}
	return svc
}

const libRepo = "https://gitlab.example.com/platform/lib.git"

func TestSealedCredentialSurvivesRestart(t *testing.T) {
	f := newFixture(t)
	k1 := keyLines("k1")
	f.svc = f.restart(t, parseKeys(t, k1))
	first, err := f.exchange(f.job("100", 2*time.Hour), libRepo, "read_repository")
	if err != nil {
		t.Fatal(err)
	}
	rec, err := f.store.Get(context.Background(), first.LedgerID)
	if err != nil {
		t.Fatal(err)
	}
	if rec.ReuseKey == "" || rec.SecretKeyID != "k1" || len(rec.SealedSecret) == 0 {
		t.Fatalf("record: reuse key %q, key id %q, sealed %d bytes; want a reuse key and the secret sealed under k1", rec.ReuseKey, rec.SecretKeyID, len(rec.SealedSecret))
	}
	if string(rec.SealedSecret) == first.AccessToken {
		t.Fatal("the ledger keeps the secret in the clear")
	}

	// A restart, with the key file rotated (a new key first): the old key
	// still opens the record.
	f.clock.Add(time.Minute)
	mints := f.minter.mints.Load()
	f.svc = f.restart(t, parseKeys(t, keyLines("k2")+k1))
	again, err := f.exchange(f.job("101", 2*time.Hour), libRepo, "read_repository")
	if err != nil {
		t.Fatal(err)
	}
	if n := f.minter.mints.Load() - mints; n != 0 {
		t.Fatalf("GitLab creates after a restart = %d, want 0", n)
	}
	if again.AccessToken != first.AccessToken || again.LedgerID != first.LedgerID || !again.Reused {
		t.Fatalf("after a restart job 101 got ledger id %s (reused %v), want %s", again.LedgerID, again.Reused, first.LedgerID)
	}
	hs, err := f.store.Holders(context.Background(), first.LedgerID)
	if err != nil || len(hs) != 2 {
		t.Fatalf("holders = %d, %v; want 2", len(hs), err)
	}
	// The same job asking again is answered from memory.
	if same, err := f.exchange(f.job("101", 2*time.Hour), libRepo, "read_repository"); err != nil || same.LedgerID != first.LedgerID {
		t.Fatalf("job 101 again: %v, %v", same, err)
	}
	if n := f.minter.mints.Load() - mints; n != 0 {
		t.Fatalf("GitLab creates = %d, want 0", n)
	}
}

func TestSealedCredentialUnknownKeyMintsAnew(t *testing.T) {
	for _, tt := range []struct {
		name  string
		after Sealer
	}{
		{"key id gone from the key file", keyring(t, "k2")},
		{"same id, another key", keyring(t, "k1")},
		{"no key file", nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			f.svc = f.restart(t, keyring(t, "k1"))
			first, err := f.exchange(f.job("100", 2*time.Hour), libRepo, "read_repository")
			if err != nil {
				t.Fatal(err)
			}
			mints := f.minter.mints.Load()
			f.svc = f.restart(t, tt.after)
			again, err := f.exchange(f.job("101", 2*time.Hour), libRepo, "read_repository")
			if err != nil {
				t.Fatal(err)
			}
			if n := f.minter.mints.Load() - mints; n != 1 || again.LedgerID == first.LedgerID {
				t.Fatalf("creates = %d (ledger id %s, first %s), want 1 new credential", n, again.LedgerID, first.LedgerID)
			}
		})
	}
}

func TestNoKeyNoSealedSecret(t *testing.T) {
	f := newFixture(t)
	iss, err := f.exchange(f.job("100", 2*time.Hour), libRepo, "read_repository")
	if err != nil {
		t.Fatal(err)
	}
	rec, err := f.store.Get(context.Background(), iss.LedgerID)
	if err != nil {
		t.Fatal(err)
	}
	if rec.ReuseKey == "" {
		t.Error("the intent has no reuse key")
	}
	if rec.SecretKeyID != "" || len(rec.SealedSecret) != 0 {
		t.Fatalf("without a key the ledger keeps a sealed secret (key id %q, %d bytes)", rec.SecretKeyID, len(rec.SealedSecret))
	}
}

func TestReloadDropsCredentialsOfChangedRules(t *testing.T) {
	f := newFixture(t)
	parse := func(text string) *policy.Policy {
		p, err := policy.Parse([]byte(text), "policy.yaml", policy.Options{GitLabURL: "https://gitlab.example.com"})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	var mu sync.Mutex
	current := parse(testPolicy)
	svc, err := New(Config{GitLabURL: "https://gitlab.example.com", MaxTTL: 12 * time.Hour, Now: f.clock.Now, Logger: slog.New(slog.DiscardHandler)},
		f.ver, func() *policy.Policy { mu.Lock(); defer mu.Unlock(); return current }, f.minter, f.store)
	if err != nil {
		t.Fatal(err)
	}
	f.svc = svc
	job100, job101 := f.job("100", 2*time.Hour), f.job("101", 2*time.Hour)
	old, err := f.exchange(job100, libRepo, "read_repository")
	if err != nil {
		t.Fatal(err)
	}
	push, err := f.exchange(job100, "https://gitlab.example.com/platform/deploy.git", "write_repository")
	if err != nil {
		t.Fatal(err)
	}
	// The reload cuts the rule's ttl from 1h to 15m.
	cut := parse(strings.Replace(testPolicy, "ttl: 1h", "ttl: 15m", 1))
	mu.Lock()
	current = cut
	mu.Unlock()
	if n := f.svc.DropChangedRules(cut); n == 0 {
		t.Fatal("the reload dropped no cached credential")
	}
	for _, job := range []string{job100, job101} {
		iss, err := f.exchange(job, libRepo, "read_repository")
		if err != nil {
			t.Fatal(err)
		}
		if iss.LedgerID == old.LedgerID || iss.ExpiresAt.After(f.clock.Now().Add(15*time.Minute)) {
			t.Fatalf("%s after the cut: ledger id %s expiring %s; want a new credential of at most 15m", job, iss.LedgerID, iss.ExpiresAt)
		}
	}
	// A rule the reload left alone keeps its cached credential.
	if again, err := f.exchange(job100, "https://gitlab.example.com/platform/deploy.git", "write_repository"); err != nil || again.LedgerID != push.LedgerID {
		t.Fatalf("unchanged rule: %v, %v; want the cached %s", again, err, push.LedgerID)
	}
	// Nothing of the old credential is left in the cache: even the old rule
	// restored does not hand it out again.
	restored := parse(testPolicy)
	mu.Lock()
	current = restored
	mu.Unlock()
	f.svc.DropChangedRules(restored)
	if iss, err := f.exchange(job100, libRepo, "read_repository"); err != nil || iss.LedgerID == old.LedgerID {
		t.Fatalf("old rule restored: %v, %v; the dropped credential %s came back", iss, err, old.LedgerID)
	}
}
