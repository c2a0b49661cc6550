package ledgertest

import (
	"bytes"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"gltoken.dev/gltoken/internal/fingerprint"
	"gltoken.dev/gltoken/internal/ledger"
)

// RunRotations runs the ledger.RotationStore contract. openPair returns two
// instances on one fresh database (the same instance twice is fine for a store
// one process owns); the concurrency checks claim through both.
func RunRotations(t *testing.T, openPair func(t *testing.T) (ledger.RotationStore, ledger.RotationStore)) {
	t.Helper()
	tests := []struct {
		name string
		fn   func(t *testing.T, a, b ledger.RotationStore)
	}{
		{"ClaimCompleteGet", testRotationClaimCompleteGet},
		{"ClaimIsExclusive", testRotationClaimIsExclusive},
		{"StaleClaimTakeOver", testRotationStaleTakeOver},
		{"Release", testRotationRelease},
		{"RefusesBadInput", testRotationRefusesBadInput},
		{"ConcurrentClaimsOneWinner", testRotationConcurrentClaims},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a, b := openPair(t)
			tc.fn(t, a, b)
		})
	}
}

func testRotationClaimCompleteGet(t *testing.T, s, _ ledger.RotationStore) {
	ctx := t.Context()
	old, next := fingerprint.Of("glpat-old"), fingerprint.Of("glpat-new")
	if _, err := s.GetRotation(ctx, old); !errors.Is(err, ledger.ErrNotFound) {
		t.Fatalf("GetRotation of nothing: %v, want ErrNotFound", err)
	}
	r, won, err := s.ClaimRotation(ctx, strings.ToUpper(old), "replica-a", t0, time.Time{})
	if err != nil || !won {
		t.Fatalf("first claim: won=%v err=%v", won, err)
	}
	if r.OldSHA256 != old || r.Holder != "replica-a" || !r.ClaimedAt.Equal(t0.UTC().Truncate(time.Microsecond)) || r.ClaimedAt.Location() != time.UTC || r.Done() {
		t.Fatalf("claim row: %+v", r)
	}
	// Claiming again as the holder keeps the claim.
	if _, won, err := s.ClaimRotation(ctx, old, "replica-a", t0.Add(time.Second), time.Time{}); err != nil || !won {
		t.Fatalf("holder's second claim: won=%v err=%v", won, err)
	}
	sealed := []byte{1, 2, 3, 0, 255}
	done := t0.Add(2 * time.Second)
	if err := s.CompleteRotation(ctx, old, "replica-a", strings.ToUpper(next), sealed, done); err != nil {
		t.Fatalf("complete: %v", err)
	}
	// Completing again with the same successor is a no-op; with another, a conflict.
	if err := s.CompleteRotation(ctx, old, "replica-a", next, sealed, done.Add(time.Second)); err != nil {
		t.Fatalf("complete again: %v", err)
	}
	if err := s.CompleteRotation(ctx, old, "replica-a", fingerprint.Of("glpat-other"), sealed, done); !errors.Is(err, ledger.ErrConflict) {
		t.Fatalf("complete with another successor: %v, want ErrConflict", err)
	}
	got, err := s.GetRotation(ctx, old)
	if err != nil {
		t.Fatal(err)
	}
	if !got.Done() || got.NewSHA256 != next || !bytes.Equal(got.Sealed, sealed) || !got.DoneAt.Equal(done.UTC().Truncate(time.Microsecond)) || got.DoneAt.Location() != time.UTC {
		t.Fatalf("completed row: %+v", got)
	}
	// A done rotation is nobody's to claim, even when old.
	if r, won, err := s.ClaimRotation(ctx, old, "replica-b", done.Add(time.Hour), done.Add(time.Hour)); err != nil || won || !r.Done() {
		t.Fatalf("claim of a done rotation: won=%v err=%v row=%+v", won, err, r)
	}
	if err := s.CompleteRotation(ctx, fingerprint.Of("glpat-unknown"), "replica-a", next, sealed, done); !errors.Is(err, ledger.ErrNotFound) {
		t.Fatalf("complete unknown: %v, want ErrNotFound", err)
	}
}

func testRotationClaimIsExclusive(t *testing.T, a, b ledger.RotationStore) {
	ctx := t.Context()
	old := fingerprint.Of("glpat-x")
	if _, won, err := a.ClaimRotation(ctx, old, "replica-a", t0, time.Time{}); err != nil || !won {
		t.Fatalf("a: won=%v err=%v", won, err)
	}
	r, won, err := b.ClaimRotation(ctx, old, "replica-b", t0.Add(time.Minute), time.Time{})
	if err != nil || won || r.Holder != "replica-a" {
		t.Fatalf("b without take-over: won=%v err=%v row=%+v", won, err, r)
	}
	// A fresh claim is not taken over.
	if _, won, err := b.ClaimRotation(ctx, old, "replica-b", t0.Add(time.Minute), t0.Add(-time.Minute)); err != nil || won {
		t.Fatalf("b taking over a fresh claim: won=%v err=%v", won, err)
	}
	if err := b.CompleteRotation(ctx, old, "replica-b", fingerprint.Of("glpat-y"), []byte{1}, t0); !errors.Is(err, ledger.ErrConflict) {
		t.Fatalf("completing another's claim: %v, want ErrConflict", err)
	}
}

func testRotationStaleTakeOver(t *testing.T, a, b ledger.RotationStore) {
	ctx := t.Context()
	old := fingerprint.Of("glpat-stale")
	if _, won, err := a.ClaimRotation(ctx, old, "replica-a", t0, time.Time{}); err != nil || !won {
		t.Fatalf("a: won=%v err=%v", won, err)
	}
	later := t0.Add(10 * time.Minute)
	r, won, err := b.ClaimRotation(ctx, old, "replica-b", later, later.Add(-5*time.Minute))
	if err != nil || !won || r.Holder != "replica-b" || !r.ClaimedAt.Equal(later.UTC().Truncate(time.Microsecond)) {
		t.Fatalf("take-over: won=%v err=%v row=%+v", won, err, r)
	}
	// The old holder lost it.
	if err := a.CompleteRotation(ctx, old, "replica-a", fingerprint.Of("glpat-late"), []byte{1}, later); !errors.Is(err, ledger.ErrConflict) {
		t.Fatalf("old holder completing: %v, want ErrConflict", err)
	}
	if _, won, err := a.ClaimRotation(ctx, old, "replica-a", later, time.Time{}); err != nil || won {
		t.Fatalf("old holder claiming again: won=%v err=%v", won, err)
	}
}

func testRotationRelease(t *testing.T, a, b ledger.RotationStore) {
	ctx := t.Context()
	old := fingerprint.Of("glpat-rel")
	if _, won, err := a.ClaimRotation(ctx, old, "replica-a", t0, time.Time{}); err != nil || !won {
		t.Fatalf("a: won=%v err=%v", won, err)
	}
	// Another holder's release changes nothing.
	if err := b.ReleaseRotation(ctx, old, "replica-b"); err != nil {
		t.Fatal(err)
	}
	if r, err := b.GetRotation(ctx, old); err != nil || r.Holder != "replica-a" {
		t.Fatalf("after a stranger's release: %+v %v", r, err)
	}
	if err := a.ReleaseRotation(ctx, old, "replica-a"); err != nil {
		t.Fatal(err)
	}
	if _, won, err := b.ClaimRotation(ctx, old, "replica-b", t0, time.Time{}); err != nil || !won {
		t.Fatalf("claim after release: won=%v err=%v", won, err)
	}
	// A done rotation is never released.
	if err := b.CompleteRotation(ctx, old, "replica-b", fingerprint.Of("glpat-rel2"), []byte{9}, t0); err != nil {
		t.Fatal(err)
	}
	if err := b.ReleaseRotation(ctx, old, "replica-b"); err != nil {
		t.Fatal(err)
	}
	if r, err := a.GetRotation(ctx, old); err != nil || !r.Done() {
		t.Fatalf("done rotation after release: %+v %v", r, err)
	}
}

func testRotationRefusesBadInput(t *testing.T, s, _ ledger.RotationStore) {
	ctx := t.Context()
	old := fingerprint.Of("glpat-bad")
	raw := "glpat-this-is-a-raw-token-not-a-fingerprint-000000000000000000000"
	cases := []struct {
		name string
		fn   func() error
	}{
		{"raw token as key", func() error { _, _, err := s.ClaimRotation(ctx, raw, "h", t0, time.Time{}); return err }},
		{"empty holder", func() error { _, _, err := s.ClaimRotation(ctx, old, "", t0, time.Time{}); return err }},
		{"holder with NUL", func() error { _, _, err := s.ClaimRotation(ctx, old, "a\x00b", t0, time.Time{}); return err }},
		{"zero claim time", func() error { _, _, err := s.ClaimRotation(ctx, old, "h", time.Time{}, time.Time{}); return err }},
		{"raw successor", func() error { return s.CompleteRotation(ctx, old, "h", raw, []byte{1}, t0) }},
		{"successor equal to old", func() error { return s.CompleteRotation(ctx, old, "h", old, []byte{1}, t0) }},
		{"nothing sealed", func() error { return s.CompleteRotation(ctx, old, "h", fingerprint.Of("n"), nil, t0) }},
		{"sealed too long", func() error {
			return s.CompleteRotation(ctx, old, "h", fingerprint.Of("n"), make([]byte, ledger.MaxSealedLen+1), t0)
		}},
		{"zero completion time", func() error { return s.CompleteRotation(ctx, old, "h", fingerprint.Of("n"), []byte{1}, time.Time{}) }},
		{"bad get key", func() error { _, err := s.GetRotation(ctx, "xyz"); return err }},
	}
	if _, won, err := s.ClaimRotation(ctx, old, "h", t0, time.Time{}); err != nil || !won {
		t.Fatalf("claim: won=%v err=%v", won, err)
	}
	for _, tc := range cases {
		if err := tc.fn(); err == nil {
			t.Errorf("%s: accepted", tc.name)
		} else if strings.Contains(err.Error(), raw) {
			t.Errorf("%s: the error quotes the raw token", tc.name)
		}
	}
	if r, err := s.GetRotation(ctx, old); err != nil || r.Done() || r.Holder != "h" {
		t.Fatalf("after refused input: %+v %v", r, err)
	}
}

func testRotationConcurrentClaims(t *testing.T, a, b ledger.RotationStore) {
	ctx := t.Context()
	old := fingerprint.Of("glpat-race")
	const n = 16
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		wins []string
	)
	start := make(chan struct{})
	for i := range n {
		s := a
		if i%2 == 1 {
			s = b
		}
		holder := "replica-" + string(rune('a'+i))
		wg.Go(func() {
			<-start
			_, won, err := s.ClaimRotation(ctx, old, holder, t0, time.Time{})
			if err != nil {
				t.Errorf("%s: %v", holder, err)
				return
			}
			if won {
				mu.Lock()
				wins = append(wins, holder)
				mu.Unlock()
			}
		})
	}
	close(start)
	wg.Wait()
	if len(wins) != 1 {
		t.Fatalf("%d replicas won the claim (%v), want exactly 1", len(wins), wins)
	}
}
