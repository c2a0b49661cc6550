package ledgertest

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"gltoken.dev/gltoken/internal/fingerprint"
	"gltoken.dev/gltoken/internal/ledger"
)

// testRotated checks ledger.SlotStore, which every store implements: a pool
// slot's record follows its token through rotations, only from the GitLab id
// it holds, only while Active; bad input changes nothing.
func testRotated(t *testing.T, s ledger.Store) {
	ss, ok := s.(ledger.SlotStore)
	if !ok {
		t.Fatalf("%T does not implement ledger.SlotStore", s)
	}
	ctx := ctxFor(t)
	r := NewRecord("slot", t0, t0.Add(time.Minute))
	mustCreate(t, s, r)
	if err := ss.Rotated(ctx, "slot", 1, 2, fingerprint.Of("x"), t0.Add(time.Hour)); !errors.Is(err, ledger.ErrConflict) {
		t.Fatalf("Rotated on a pending record = %v, want ErrConflict", err)
	}
	sha := fingerprint.Of("glpat-first")
	if err := s.Activate(ctx, "slot", 10, "project_1_bot_x", sha, t0.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if err := s.RetryLater(ctx, "slot", t0.Add(2*time.Hour), "a failed attempt"); err != nil {
		t.Fatal(err)
	}
	if err := s.SealSecret(ctx, "slot", "k1", []byte("sealed")); err != nil {
		t.Fatal(err)
	}
	next := t0.Add(3 * time.Hour)
	newSHA := fingerprint.Of("glpat-second")
	if err := ss.Rotated(ctx, "slot", 10, 11, strings.ToUpper(newSHA), next); err != nil {
		t.Fatalf("Rotated: %v", err)
	}
	got := mustGet(t, s, "slot")
	want := mustGet(t, s, "slot")
	want.GitLabID, want.SecretSHA256, want.ExpiresAt, want.NextAttemptAt = 11, newSHA, next, next
	want.Attempts, want.LastError, want.SecretKeyID, want.SealedSecret = 0, "", "", nil
	want.State, want.Username = ledger.Active, "project_1_bot_x"
	checkRecord(t, got, want)
	if _, err := s.FindBySecret(ctx, sha); !errors.Is(err, ledger.ErrNotFound) {
		t.Errorf("the rotated-away secret still finds the record: %v", err)
	}
	// From a GitLab id the record no longer holds: another rotation won.
	if err := ss.Rotated(ctx, "slot", 10, 12, fingerprint.Of("y"), next); !errors.Is(err, ledger.ErrConflict) {
		t.Fatalf("Rotated from a stale id = %v, want ErrConflict", err)
	}
	// A lost answer: the secret is known to nobody.
	if err := ss.Rotated(ctx, "slot", 11, 12, "", next.Add(time.Hour)); err != nil {
		t.Fatalf("Rotated with an unknown secret: %v", err)
	}
	if g := mustGet(t, s, "slot"); g.GitLabID != 12 || g.SecretSHA256 != "" {
		t.Fatalf("after a lost answer: %+v", g)
	}
	before := mustGet(t, s, "slot")
	for _, bad := range []struct {
		id       string
		from, to int64
		sha      string
		exp      time.Time
	}{
		{"", 12, 13, "", next},
		{"slot", 12, 13, "not-hex", next},
		{"slot", 12, 13, "glpat-rawsecret", next},
		{"slot", 12, 13, "", time.Time{}},
		{"slot", 12, 0, "", next},
	} {
		if err := ss.Rotated(ctx, bad.id, bad.from, bad.to, bad.sha, bad.exp); err == nil {
			t.Errorf("Rotated(%q, %d, %d, %q, %v) accepted", bad.id, bad.from, bad.to, bad.sha, bad.exp)
		}
	}
	checkRecord(t, mustGet(t, s, "slot"), before)
	if err := ss.Rotated(ctx, "nothing", 1, 2, "", next); !errors.Is(err, ledger.ErrNotFound) {
		t.Errorf("Rotated unknown = %v, want ErrNotFound", err)
	}
	if err := s.MarkRevoked(ctx, "slot", next); err != nil {
		t.Fatal(err)
	}
	if err := ss.Rotated(ctx, "slot", 12, 13, "", next); !errors.Is(err, ledger.ErrConflict) {
		t.Errorf("Rotated on a revoked record = %v, want ErrConflict", err)
	}
}

// testSlotLocks checks ledger.SlotLocker, for the stores that implement it
// (those several processes share): one pool's lock is held by one instance
// at a time across instances, other pools' locks do not wait for it, and a
// lock not taken (the context ended) leaves nothing held.
func testSlotLocks(t *testing.T, a, b ledger.Store) {
	la, okA := a.(ledger.SlotLocker)
	lb, okB := b.(ledger.SlotLocker)
	if !okA || !okB {
		t.Logf("%T is not a ledger.SlotLocker: one process owns it", a)
		return
	}
	ctx := ctxFor(t)
	mustCreate(t, a, NewRecord("probe", t0, t0))
	var inside, most atomic.Int32
	var wg sync.WaitGroup
	for i := range 16 {
		l, s := la, b
		if i%2 == 1 {
			l, s = lb, a
		}
		wg.Go(func() {
			unlock, err := l.LockSlots(ctx, "pool-x")
			if err != nil {
				t.Error(err)
				return
			}
			n := inside.Add(1)
			for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
			}
			// Real work on the other instance while holding it.
			if _, err := s.Get(ctx, "probe"); err != nil {
				t.Error(err)
			}
			inside.Add(-1)
			unlock()
		})
	}
	wg.Wait()
	if m := most.Load(); m != 1 {
		t.Fatalf("%d holders of one pool's lock at once, want 1", m)
	}

	// Another pool's lock does not wait for a held one (else this hangs).
	unlockX, err := la.LockSlots(ctx, "pool-x")
	if err != nil {
		t.Fatal(err)
	}
	unlockY, err := lb.LockSlots(ctx, "pool-y")
	if err != nil {
		t.Fatal(err)
	}
	unlockY()
	// Waiting with a context that ends takes nothing.
	done, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := lb.LockSlots(done, "pool-x"); err == nil {
		t.Fatal("LockSlots with an ended context took the lock another instance holds")
	}
	unlockX()
	unlock, err := lb.LockSlots(ctx, "pool-x")
	if err != nil {
		t.Fatalf("after the holder let go: %v", err)
	}
	unlock()
	if _, err := la.LockSlots(ctx, ""); err == nil {
		t.Error("LockSlots accepted an empty key")
	}
}
