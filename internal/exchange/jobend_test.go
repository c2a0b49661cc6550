package exchange

import (
	"context"
	"errors"
	"maps"
	"slices"
	"testing"
	"time"

	"gltoken.dev/gltoken/internal/idtoken"
	"gltoken.dev/gltoken/internal/ledger"
)

func TestEndJobRevokesWhatOnlyItHeld(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	other := maps.Clone(f.ver.tokens["job-token"].Claims)
	other["job_id"] = "13"
	other["project_id"] = "8" // another project's job: it cannot share job 12's credential
	f.ver.tokens["other-job"] = &idtoken.Token{Issuer: "https://gitlab.example.com", Subject: "s", ID: "jti-13",
		IssuedAt: f.clock.Now(), Expiry: f.clock.Now().Add(time.Hour), Claims: other}

	a, err := f.exchange("job-token", "https://gitlab.example.com/platform/lib.git", "read_repository")
	if err != nil {
		t.Fatal(err)
	}
	b, err := f.exchange("other-job", "https://gitlab.example.com/platform/lib.git", "read_repository")
	if err != nil {
		t.Fatal(err)
	}
	hs, err := f.store.Holders(ctx, a.LedgerID)
	if err != nil || len(hs) != 1 || hs[0].JobID != "12" || !hs[0].Holding() {
		t.Fatalf("holders of the minted credential = %+v, %v; want job 12 holding it", hs, err)
	}

	r := NewReaper(ReaperConfig{Interval: time.Second, Now: f.clock.Now}, f.store, f.minter, f.svc.Cache())
	ended, err := r.EndJob(ctx, "12", "")
	if err != nil || !slices.Equal(ended, []string{a.LedgerID}) {
		t.Fatalf("EndJob(12) = %v, %v; want [%s]", ended, err, a.LedgerID)
	}
	if rec, _ := f.store.Get(ctx, a.LedgerID); rec.State != ledger.Revoked {
		t.Fatalf("job 12's credential is %s after its job ended", rec.State)
	}
	if rec, _ := f.store.Get(ctx, b.LedgerID); rec.State != ledger.Active {
		t.Fatalf("job 13's credential is %s after another job ended", rec.State)
	}
	if f.minter.liveCount() != 1 {
		t.Fatalf("live at GitLab = %d, want 1 (job 13's)", f.minter.liveCount())
	}
	// Twice, or a job that held nothing: nothing happens.
	for _, job := range []string{"12", "99"} {
		if ended, err := r.EndJob(ctx, job, ""); err != nil || len(ended) != 0 {
			t.Fatalf("EndJob(%s) again = %v, %v", job, ended, err)
		}
	}
	// The ended job's next request does not get the revoked credential from the cache.
	a2, err := f.exchange("job-token", "https://gitlab.example.com/platform/lib.git", "read_repository")
	if err != nil || a2.AccessToken == a.AccessToken {
		t.Fatalf("after job end: %v, same token %v", err, a2 != nil && a2.AccessToken == a.AccessToken)
	}
}

// TestJobEndDuringMint: a job that ends while its credential is being
// minted gets nothing, and the credential is revoked, not left to its TTL.
func TestJobEndDuringMint(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	f.minter.block = make(chan struct{})
	done := make(chan error, 1)
	go func() {
		_, err := f.exchange("job-token", "https://gitlab.example.com/platform/lib.git", "read_repository")
		done <- err
	}()
	r := NewReaper(ReaperConfig{Interval: time.Second, Now: f.clock.Now}, f.store, f.minter, f.svc.Cache())
	// Wait for the intent, then end the job while GitLab is "working".
	for {
		if hs, _ := f.store.Holds(ctx, "12"); len(hs) == 1 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	if ended, err := r.EndJob(ctx, "12", ""); err != nil || len(ended) != 1 {
		t.Fatalf("EndJob during the mint = %v, %v", ended, err)
	}
	close(f.minter.block)
	err := <-done
	var e *Error
	if !errors.As(err, &e) || e.Code != CodeInvalidGrant {
		t.Fatalf("exchange of an ended job = %v, want invalid_grant", err)
	}
	if _, err := r.RunOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if n := f.minter.liveCount(); n != 0 {
		t.Fatalf("%d credential(s) live after the job ended during the mint", n)
	}
}

// TestSharedCredentialEndsWithItsLastJob: a credential two jobs hold (as
// reuse hands it out) survives the first job's end and is revoked at the
// last one's.
func TestSharedCredentialEndsWithItsLastJob(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	a, err := f.exchange("job-token", "https://gitlab.example.com/platform/lib.git", "read_repository")
	if err != nil {
		t.Fatal(err)
	}
	if err := f.store.AddHolder(ctx, ledger.Holder{LedgerID: a.LedgerID, JobID: "13", ProjectID: "7",
		TokenExpiresAt: f.clock.Now().Add(time.Hour), HeldSince: f.clock.Now()}); err != nil {
		t.Fatal(err)
	}
	r := NewReaper(ReaperConfig{Interval: time.Second, Now: f.clock.Now}, f.store, f.minter, f.svc.Cache())
	if ended, err := r.EndJob(ctx, "12", ""); err != nil || len(ended) != 0 {
		t.Fatalf("EndJob(first holder) = %v, %v; want nothing ended", ended, err)
	}
	if rec, _ := f.store.Get(ctx, a.LedgerID); rec.State != ledger.Active || f.minter.liveCount() != 1 {
		t.Fatalf("after the first job's end: %s, live %d; want active", rec.State, f.minter.liveCount())
	}
	if ended, err := r.EndJob(ctx, "13", ""); err != nil || !slices.Equal(ended, []string{a.LedgerID}) {
		t.Fatalf("EndJob(last holder) = %v, %v", ended, err)
	}
	if rec, _ := f.store.Get(ctx, a.LedgerID); rec.State != ledger.Revoked || f.minter.liveCount() != 0 {
		t.Fatalf("after the last job's end: %s, live %d; want revoked", rec.State, f.minter.liveCount())
	}
}
