package ledgertest

// The contract of holders (which jobs hold each credential), sealed secrets
// and reuse.

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"gltoken.dev/gltoken/internal/ledger"
)

// hold returns job's hold on credential id at t, its ID token expiring an
// hour later.
func hold(id, job string, at time.Time) ledger.Holder {
	return ledger.Holder{LedgerID: id, JobID: job, ProjectID: "7", PipelineID: "p-" + job,
		TokenExpiresAt: at.Add(time.Hour), HeldSince: at}
}

func mustHold(t *testing.T, s ledger.Store, h ledger.Holder) {
	t.Helper()
	if err := s.AddHolder(ctxFor(t), h); err != nil {
		t.Fatalf("AddHolder(%s, %s): %v", h.LedgerID, h.JobID, err)
	}
}

func mustHolders(t *testing.T, s ledger.Store, id string) []ledger.Holder {
	t.Helper()
	hs, err := s.Holders(ctxFor(t), id)
	if err != nil {
		t.Fatalf("Holders(%s): %v", id, err)
	}
	return hs
}

func mustRelease(t *testing.T, s ledger.Store, job string, at time.Time) []string {
	t.Helper()
	ids, err := s.ReleaseJob(ctxFor(t), job, at)
	if err != nil {
		t.Fatalf("ReleaseJob(%s): %v", job, err)
	}
	return ids
}

func checkHolder(t *testing.T, got, want ledger.Holder) {
	t.Helper()
	for _, f := range []struct{ name, got, want string }{
		{"LedgerID", got.LedgerID, want.LedgerID},
		{"JobID", got.JobID, want.JobID},
		{"ProjectID", got.ProjectID, want.ProjectID},
		{"PipelineID", got.PipelineID, want.PipelineID},
	} {
		if f.got != f.want {
			t.Errorf("holder %s = %q, want %q", f.name, f.got, f.want)
		}
	}
	checkTime(t, "holder TokenExpiresAt", got.TokenExpiresAt, want.TokenExpiresAt)
	checkTime(t, "holder HeldSince", got.HeldSince, want.HeldSince)
	checkTime(t, "holder ReleasedAt", got.ReleasedAt, want.ReleasedAt)
}

func holderJobs(hs []ledger.Holder) []string {
	out := make([]string, len(hs))
	for i, h := range hs {
		out[i] = h.JobID
	}
	return out
}

func holderLedgerIDs(hs []ledger.Holder) []string {
	out := make([]string, len(hs))
	for i, h := range hs {
		out[i] = h.LedgerID
	}
	return out
}

// testFirstHolder: the requesting job holds what it asked for from the
// intent on; a record without a job has no holder; a refused or duplicate
// create adds none.
func testFirstHolder(t *testing.T, s ledger.Store) {
	r := NewRecord("first", t0, t0.Add(time.Minute))
	mustCreate(t, s, r)
	hs := mustHolders(t, s, "first")
	if len(hs) != 1 {
		t.Fatalf("Holders = %+v, want the requesting job", hs)
	}
	checkHolder(t, hs[0], ledger.Holder{LedgerID: "first", JobID: r.JobID, ProjectID: r.ProjectID,
		PipelineID: r.PipelineID, TokenExpiresAt: r.TokenExpiresAt, HeldSince: r.CreatedAt})
	if !hs[0].Holding() {
		t.Error("the first holder does not hold it")
	}

	dup := NewRecord("first", t0.Add(time.Hour), t0.Add(time.Hour))
	dup.JobID = "another-job"
	if err := s.CreateIntent(ctxFor(t), dup); !errors.Is(err, ledger.ErrExists) {
		t.Fatalf("duplicate CreateIntent: %v", err)
	}
	if got := holderJobs(mustHolders(t, s, "first")); !slices.Equal(got, []string{r.JobID}) {
		t.Errorf("after a refused duplicate, holders = %q", got)
	}

	bad := NewRecord("refused", t0, t0)
	bad.Kind = "personal_access_token"
	if err := s.CreateIntent(ctxFor(t), bad); err == nil {
		t.Fatal("CreateIntent accepted an unknown kind")
	}
	if hs := mustHolders(t, s, "refused"); len(hs) != 0 {
		t.Errorf("a refused intent left holders %+v", hs)
	}

	// Without a job, or without its token's expiry, no first holder.
	nojob := NewRecord("no-job", t0, t0)
	nojob.JobID = ""
	mustCreate(t, s, nojob)
	noexp := NewRecord("no-exp", t0, t0)
	noexp.TokenExpiresAt = time.Time{}
	mustCreate(t, s, noexp)
	for _, id := range []string{"no-job", "no-exp"} {
		if hs := mustHolders(t, s, id); len(hs) != 0 {
			t.Errorf("%s has holders %+v, want none", id, hs)
		}
	}
	if hs := mustHolders(t, s, "unknown"); len(hs) != 0 {
		t.Errorf("an unknown record has holders %+v", hs)
	}
}

func testAddHolder(t *testing.T, s ledger.Store) {
	ctx := ctxFor(t)
	r := NewRecord("shared", t0, t0.Add(time.Minute))
	mustCreate(t, s, r)
	// A pending credential takes holders (the mint is under way) ...
	h1 := hold("shared", "job-1", t0.Add(time.Second))
	mustHold(t, s, h1)
	mustActivate(t, s, "shared", t0.Add(time.Hour))
	// ... and so does an active one.
	h2 := hold("shared", "job-2", t0.Add(2*time.Second))
	mustHold(t, s, h2)
	// Again: a no-op, the first hold stays.
	again := h2
	again.HeldSince, again.TokenExpiresAt = t0.Add(time.Minute), t0.Add(5*time.Hour)
	mustHold(t, s, again)
	hs := mustHolders(t, s, "shared")
	if got := holderJobs(hs); !slices.Equal(got, []string{r.JobID, "job-1", "job-2"}) {
		t.Fatalf("holders = %q, want the requester, job-1, job-2 (oldest first)", got)
	}
	checkHolder(t, hs[1], h1)
	checkHolder(t, hs[2], h2)
	// Holds are not the record's requester fields.
	if got := mustGet(t, s, "shared"); got.JobID != r.JobID {
		t.Errorf("record JobID = %q, want %q", got.JobID, r.JobID)
	}

	if err := s.AddHolder(ctx, hold("nope", "job-1", t0)); !errors.Is(err, ledger.ErrNotFound) {
		t.Errorf("AddHolder on an unknown record: %v, want ErrNotFound", err)
	}

	// Ended credentials take no holder.
	for _, end := range []struct {
		id  string
		end func(id string)
	}{
		{"revoked", func(id string) {
			mustActivate(t, s, id, t0.Add(time.Hour))
			if err := s.MarkRevoked(ctx, id, t0); err != nil {
				t.Fatal(err)
			}
		}},
		{"abandoned", func(id string) {
			if err := s.Abandon(ctx, id, "refused"); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		mustCreate(t, s, NewRecord(end.id, t0, t0))
		end.end(end.id)
		if err := s.AddHolder(ctx, hold(end.id, "job-9", t0)); !errors.Is(err, ledger.ErrConflict) {
			t.Errorf("AddHolder on a %s record: %v, want ErrConflict", end.id, err)
		}
		if got := holderJobs(mustHolders(t, s, end.id)); len(got) != 1 {
			t.Errorf("holders of the %s record = %q, want only its requester", end.id, got)
		}
	}

	// A job that let go does not hold it again, and a credential every
	// holder let go takes no new one.
	mustCreate(t, s, NewRecord("let-go", t0, t0))
	mustActivate(t, s, "let-go", t0.Add(time.Hour))
	mustRelease(t, s, r.JobID, t0.Add(time.Minute)) // the requester of both "shared" and "let-go"
	if err := s.AddHolder(ctx, hold("let-go", r.JobID, t0.Add(2*time.Minute))); !errors.Is(err, ledger.ErrConflict) {
		t.Errorf("AddHolder by a job that let go: %v, want ErrConflict", err)
	}
	if err := s.AddHolder(ctx, hold("let-go", "job-late", t0.Add(2*time.Minute))); !errors.Is(err, ledger.ErrConflict) {
		t.Errorf("AddHolder on a credential every job let go: %v, want ErrConflict", err)
	}
	// "shared" is still held by job-1 and job-2: it takes more.
	mustHold(t, s, hold("shared", "job-3", t0.Add(3*time.Minute)))

	// A record without a job takes a first holder.
	nojob := NewRecord("no-job", t0, t0)
	nojob.JobID, nojob.TokenExpiresAt = "", time.Time{}
	mustCreate(t, s, nojob)
	mustHold(t, s, hold("no-job", "job-1", t0))
}

func testAddHolderRefusesBadInput(t *testing.T, s ledger.Store) {
	mustCreate(t, s, NewRecord("r", t0, t0))
	for _, tc := range []struct {
		name   string
		mutate func(h *ledger.Holder)
	}{
		{"no ledger id", func(h *ledger.Holder) { h.LedgerID = "" }},
		{"no job id", func(h *ledger.Holder) { h.JobID = "" }},
		{"no token expiry", func(h *ledger.Holder) { h.TokenExpiresAt = time.Time{} }},
		{"no hold time", func(h *ledger.Holder) { h.HeldSince = time.Time{} }},
		{"already let go", func(h *ledger.Holder) { h.ReleasedAt = t0 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := hold("r", "job-bad", t0)
			tc.mutate(&h)
			if err := s.AddHolder(ctxFor(t), h); err == nil {
				t.Fatal("AddHolder accepted it")
			} else if errors.Is(err, ledger.ErrConflict) || errors.Is(err, ledger.ErrNotFound) {
				t.Fatalf("AddHolder: %v, want a validation error", err)
			}
			if got := holderJobs(mustHolders(t, s, "r")); len(got) != 1 {
				t.Fatalf("holders = %q after a refused hold", got)
			}
		})
	}
}

// testHolds: a job's holds on live credentials, the question job-end
// revocation asks.
func testHolds(t *testing.T, s ledger.Store) {
	ctx := ctxFor(t)
	for i, id := range []string{"h-b", "h-a", "h-c", "h-revoked", "h-abandoned"} {
		r := NewRecord(id, t0.Add(time.Duration(i)*time.Second), t0)
		r.JobID = "other"
		mustCreate(t, s, r)
		mustHold(t, s, hold(id, "job-7", t0.Add(time.Duration(10-i)*time.Second)))
	}
	mustActivate(t, s, "h-b", t0.Add(time.Hour))
	mustActivate(t, s, "h-revoked", t0.Add(time.Hour))
	if err := s.MarkRevoked(ctx, "h-revoked", t0); err != nil {
		t.Fatal(err)
	}
	if err := s.Abandon(ctx, "h-abandoned", "x"); err != nil {
		t.Fatal(err)
	}
	mustHold(t, s, hold("h-a", "job-8", t0))

	hs, err := s.Holds(ctx, "job-7")
	if err != nil {
		t.Fatal(err)
	}
	// Oldest hold first: h-c (t0+8s), h-a (t0+9s), h-b (t0+10s).
	if got := holderLedgerIDs(hs); !slices.Equal(got, []string{"h-c", "h-a", "h-b"}) {
		t.Fatalf("Holds(job-7) = %q, want h-c h-a h-b", got)
	}
	checkHolder(t, hs[0], hold("h-c", "job-7", t0.Add(8*time.Second)))
	for _, job := range []string{"nobody", ""} {
		if hs, err := s.Holds(ctx, job); err != nil || len(hs) != 0 {
			t.Errorf("Holds(%q) = %+v, %v; want none", job, hs, err)
		}
	}
	mustRelease(t, s, "job-7", t0.Add(time.Minute))
	if hs, err := s.Holds(ctx, "job-7"); err != nil || len(hs) != 0 {
		t.Errorf("Holds after the release = %+v, %v; want none", hs, err)
	}
	if got := holderLedgerIDs(mustHoldsOf(t, s, "job-8")); !slices.Equal(got, []string{"h-a"}) {
		t.Errorf("Holds(job-8) = %q, want h-a", got)
	}
}

func mustHoldsOf(t *testing.T, s ledger.Store, job string) []ledger.Holder {
	t.Helper()
	hs, err := s.Holds(ctxFor(t), job)
	if err != nil {
		t.Fatalf("Holds(%s): %v", job, err)
	}
	return hs
}

// testReleaseJob: the other question: let go of a job's holds; which
// credentials does no job hold any more.
func testReleaseJob(t *testing.T, s ledger.Store) {
	ctx := ctxFor(t)
	// solo: only job-1. pair: job-1 and job-2. pend: pending, only job-1.
	// gone: revoked, only job-1.
	for _, id := range []string{"solo", "pair", "pend", "gone"} {
		r := NewRecord(id, t0, t0)
		r.JobID = "job-1"
		mustCreate(t, s, r)
	}
	mustActivate(t, s, "solo", t0.Add(time.Hour))
	mustActivate(t, s, "pair", t0.Add(time.Hour))
	mustActivate(t, s, "gone", t0.Add(time.Hour))
	if err := s.MarkRevoked(ctx, "gone", t0); err != nil {
		t.Fatal(err)
	}
	mustHold(t, s, hold("pair", "job-2", t0.Add(time.Second)))

	at := t0.Add(10 * time.Minute)
	if got := mustRelease(t, s, "job-1", at); !slices.Equal(got, []string{"pend", "solo"}) {
		t.Fatalf("ReleaseJob(job-1) = %q, want pend solo (sorted; not pair, still held; not gone, revoked)", got)
	}
	hs := mustHolders(t, s, "pair")
	if got := holderJobs(hs); !slices.Equal(got, []string{"job-1", "job-2"}) {
		t.Fatalf("holders of pair = %q", got)
	}
	checkTime(t, "job-1 ReleasedAt", hs[0].ReleasedAt, at)
	if hs[0].Holding() || !hs[1].Holding() {
		t.Errorf("holding = %v %v, want false true", hs[0].Holding(), hs[1].Holding())
	}
	// Again, or later: nothing, and the first release time stays.
	if got := mustRelease(t, s, "job-1", at.Add(time.Hour)); len(got) != 0 {
		t.Errorf("second ReleaseJob(job-1) = %q, want none", got)
	}
	checkTime(t, "job-1 ReleasedAt after a second release", mustHolders(t, s, "solo")[0].ReleasedAt, at)
	if got := mustRelease(t, s, "job-2", at.Add(time.Minute)); !slices.Equal(got, []string{"pair"}) {
		t.Errorf("ReleaseJob(job-2) = %q, want pair (its last holder left)", got)
	}
	if got := mustRelease(t, s, "nobody", at); len(got) != 0 {
		t.Errorf("ReleaseJob(nobody) = %q, want none", got)
	}
	if _, err := s.ReleaseJob(ctx, "job-3", time.Time{}); err == nil {
		t.Error("ReleaseJob accepted a zero time")
	}
	// Releasing changes no record.
	if r := mustGet(t, s, "solo"); r.State != ledger.Active {
		t.Errorf("solo is %s after the release, want active (revoking is the caller's work)", r.State)
	}
}

// testSlotHolders: a pool slot's record is never let go. Its jobs end and
// it stays (its secret rotates at its TTL, whoever held it), so ReleaseJob
// never returns it and it takes new holders; a job that let go still does
// not hold it again, and an ended slot takes none.
func testSlotHolders(t *testing.T, s ledger.Store) {
	ctx := ctxFor(t)
	slot := ledger.SlotIDPrefix + "abc-0"
	r := NewRecord(slot, t0, t0)
	r.JobID = "job-1"
	mustCreate(t, s, r)
	mustActivate(t, s, slot, t0.Add(time.Hour))
	mustHold(t, s, hold(slot, "job-2", t0.Add(time.Second)))
	// An ordinary credential held by the same jobs, for comparison.
	pl := NewRecord("plain", t0, t0)
	pl.JobID = "job-1"
	mustCreate(t, s, pl)
	mustActivate(t, s, "plain", t0.Add(time.Hour))
	mustHold(t, s, hold("plain", "job-2", t0.Add(time.Second)))

	if got := mustRelease(t, s, "job-1", t0.Add(time.Minute)); !slices.Equal(got, []string(nil)) {
		t.Fatalf("ReleaseJob(job-1) = %q, want none (job-2 holds both)", got)
	}
	if got := mustRelease(t, s, "job-2", t0.Add(2*time.Minute)); !slices.Equal(got, []string{"plain"}) {
		t.Fatalf("ReleaseJob(job-2) = %q, want only plain: a pool slot is not ended at job end", got)
	}
	if err := s.AddHolder(ctx, hold("plain", "job-3", t0.Add(3*time.Minute))); !errors.Is(err, ledger.ErrConflict) {
		t.Fatalf("AddHolder on an ordinary credential every job let go: %v, want ErrConflict", err)
	}
	// The slot takes the next job, which is recorded like any holder.
	h3 := hold(slot, "job-3", t0.Add(3*time.Minute))
	mustHold(t, s, h3)
	hs := mustHolders(t, s, slot)
	if got := holderJobs(hs); !slices.Equal(got, []string{"job-1", "job-2", "job-3"}) {
		t.Fatalf("slot holders = %q, want job-1 job-2 job-3", got)
	}
	checkHolder(t, hs[2], h3)
	if got := holderLedgerIDs(mustHoldsOf(t, s, "job-3")); !slices.Equal(got, []string{slot}) {
		t.Errorf("Holds(job-3) = %q, want the slot", got)
	}
	if err := s.AddHolder(ctx, hold(slot, "job-1", t0.Add(4*time.Minute))); !errors.Is(err, ledger.ErrConflict) {
		t.Errorf("AddHolder on the slot by a job that let go: %v, want ErrConflict", err)
	}
	if got := mustRelease(t, s, "job-3", t0.Add(5*time.Minute)); len(got) != 0 {
		t.Errorf("ReleaseJob(job-3) = %q, want none", got)
	}
	if g := mustGet(t, s, slot); g.State != ledger.Active {
		t.Errorf("the slot is %s after its jobs ended, want active", g.State)
	}
	// A pending slot (its first mint under way) is not ended either.
	pend := ledger.SlotIDPrefix + "abc-1"
	pr := NewRecord(pend, t0, t0)
	pr.JobID = "job-4"
	mustCreate(t, s, pr)
	if got := mustRelease(t, s, "job-4", t0.Add(time.Minute)); len(got) != 0 {
		t.Errorf("ReleaseJob(job-4) = %q, want none for a pending slot", got)
	}
	// An ended slot takes no holder.
	if err := s.MarkRevoked(ctx, slot, t0.Add(6*time.Minute)); err != nil {
		t.Fatal(err)
	}
	if err := s.AddHolder(ctx, hold(slot, "job-5", t0.Add(7*time.Minute))); !errors.Is(err, ledger.ErrConflict) {
		t.Errorf("AddHolder on a revoked slot: %v, want ErrConflict", err)
	}
}

func testSealSecret(t *testing.T, s ledger.Store) {
	ctx := ctxFor(t)
	mustCreate(t, s, NewRecord("sealed", t0, t0))
	if err := s.SealSecret(ctx, "sealed", "k1", []byte("ciphertext")); !errors.Is(err, ledger.ErrConflict) {
		t.Errorf("SealSecret on a pending record: %v, want ErrConflict", err)
	}
	mustActivate(t, s, "sealed", t0.Add(time.Hour))
	want := mustGet(t, s, "sealed")
	sealed := []byte{0, 1, 2, 0xff, 0, 'x'} // bytes, NULs and all
	if err := s.SealSecret(ctx, "sealed", "k1", sealed); err != nil {
		t.Fatalf("SealSecret: %v", err)
	}
	want.SecretKeyID, want.SealedSecret = "k1", sealed
	checkRecord(t, mustGet(t, s, "sealed"), want)
	// A new key (or a rotated secret) replaces it.
	if err := s.SealSecret(ctx, "sealed", "k2", []byte("other")); err != nil {
		t.Fatalf("SealSecret again: %v", err)
	}
	want.SecretKeyID, want.SealedSecret = "k2", []byte("other")
	checkRecord(t, mustGet(t, s, "sealed"), want)

	for _, tc := range []struct {
		name   string
		keyID  string
		sealed []byte
	}{
		{"no key id", "", []byte("x")},
		{"nothing sealed", "k3", nil},
		{"too long", "k3", make([]byte, ledger.MaxSealedLen+1)},
	} {
		if err := s.SealSecret(ctx, "sealed", tc.keyID, tc.sealed); err == nil {
			t.Errorf("SealSecret with %s: accepted", tc.name)
		}
	}
	checkRecord(t, mustGet(t, s, "sealed"), want)
	if err := s.SealSecret(ctx, "nope", "k1", []byte("x")); !errors.Is(err, ledger.ErrNotFound) {
		t.Errorf("SealSecret on an unknown record: %v, want ErrNotFound", err)
	}

	// Revocation drops the sealed secret, and nothing seals it again.
	if err := s.MarkRevoked(ctx, "sealed", t0.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	got := mustGet(t, s, "sealed")
	if got.SecretKeyID != "" || got.SealedSecret != nil {
		t.Errorf("after revocation: key id %q, sealed %d bytes; want none", got.SecretKeyID, len(got.SealedSecret))
	}
	if err := s.SealSecret(ctx, "sealed", "k1", []byte("x")); !errors.Is(err, ledger.ErrConflict) {
		t.Errorf("SealSecret on a revoked record: %v, want ErrConflict", err)
	}
	if r, err := s.FindBySecret(ctx, got.SecretSHA256); err != nil || r.SealedSecret != nil {
		t.Errorf("FindBySecret after revocation: sealed %d bytes, %v", len(r.SealedSecret), err)
	}
}

func testReusable(t *testing.T, s ledger.Store) {
	ctx := ctxFor(t)
	now := t0.Add(time.Minute)
	live := func(id, key, job string, expires time.Time) {
		t.Helper()
		r := NewRecord(id, t0, t0)
		r.ReuseKey, r.JobID = key, job
		mustCreate(t, s, r)
		mustActivate(t, s, id, expires)
		if err := s.SealSecret(ctx, id, "k1", []byte("sealed-"+id)); err != nil {
			t.Fatal(err)
		}
	}
	live("late", "g", "j", now.Add(50*time.Minute))
	live("early", "g", "j", now.Add(20*time.Minute))
	live("mid-b", "g", "j", now.Add(30*time.Minute))
	live("mid-a", "g", "j", now.Add(30*time.Minute))
	live("other-grant", "h", "j", now.Add(30*time.Minute))
	live("outlives-job", "g", "j", now.Add(3*time.Hour))
	live("dying", "g", "j", now.Add(30*time.Second)) // within the margin
	live("revoked", "g", "j", now.Add(30*time.Minute))
	live("let-go", "g", "leaver", now.Add(30*time.Minute))
	live("no-job", "g", "", now.Add(30*time.Minute)) // no holder ever: not let go
	if err := s.MarkRevoked(ctx, "revoked", now); err != nil {
		t.Fatal(err)
	}
	mustRelease(t, s, "leaver", now)
	// Not sealed: nothing to hand out.
	unsealed := NewRecord("unsealed", t0, t0)
	unsealed.ReuseKey = "g"
	mustCreate(t, s, unsealed)
	mustActivate(t, s, "unsealed", now.Add(30*time.Minute))
	// Pending: not a credential yet.
	pending := NewRecord("pending", t0, t0)
	pending.ReuseKey = "g"
	mustCreate(t, s, pending)

	liveAfter, notAfter := now.Add(2*time.Minute), now.Add(2*time.Hour)
	got, err := s.Reusable(ctx, "g", liveAfter, notAfter, 10)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"late", "mid-a", "mid-b", "no-job", "early"}
	if !slices.Equal(ids(got), want) {
		t.Fatalf("Reusable = %q, want %q (latest expiry first, then id)", ids(got), want)
	}
	if string(got[0].SealedSecret) != "sealed-late" || got[0].SecretKeyID != "k1" || got[0].ReuseKey != "g" {
		t.Errorf("Reusable[0] = key %q, sealed %q, reuse key %q", got[0].SecretKeyID, got[0].SealedSecret, got[0].ReuseKey)
	}
	// The bounds: expiry after liveAfter, and no later than notAfter.
	if got, _ := s.Reusable(ctx, "g", liveAfter, now.Add(30*time.Minute), 10); !slices.Equal(ids(got), []string{"mid-a", "mid-b", "no-job", "early"}) {
		t.Errorf("Reusable up to exactly 30 min = %q", ids(got))
	}
	if got, _ := s.Reusable(ctx, "g", now.Add(30*time.Minute), notAfter, 10); !slices.Equal(ids(got), []string{"late"}) {
		t.Errorf("Reusable after exactly 30 min = %q", ids(got))
	}
	if got, _ := s.Reusable(ctx, "g", liveAfter, notAfter, 2); !slices.Equal(ids(got), []string{"late", "mid-a"}) {
		t.Errorf("Reusable with limit 2 = %q", ids(got))
	}
	if got, _ := s.Reusable(ctx, "nothing", liveAfter, notAfter, 10); len(got) != 0 {
		t.Errorf("Reusable of an unknown grant = %q", ids(got))
	}
	for _, tc := range []struct {
		key   string
		limit int
	}{{"", 10}, {"g", 0}, {"g", -1}} {
		if _, err := s.Reusable(ctx, tc.key, liveAfter, notAfter, tc.limit); err == nil {
			t.Errorf("Reusable(%q, limit %d) accepted", tc.key, tc.limit)
		}
	}
}

// testConcurrentHoldRelease: a job taking up a credential while its last
// holder lets go: either the hold comes first (and the credential is not
// reported as let go) or the release does (and the hold is refused), never
// both a hold and a report, on one instance or across instances.
func testConcurrentHoldRelease(t *testing.T, a, b ledger.Store) {
	const rounds = 20
	for i := range rounds {
		id := fmt.Sprintf("race-%02d", i)
		r := NewRecord(id, t0, t0)
		r.JobID = "leaver-" + id
		mustCreate(t, a, r)
		mustActivate(t, a, id, t0.Add(time.Hour))
		var (
			wg       sync.WaitGroup
			holdErr  error
			orphaned []string
			relErr   error
		)
		wg.Go(func() { holdErr = b.AddHolder(ctxFor(t), hold(id, "joiner-"+id, t0.Add(time.Second))) })
		wg.Go(func() { orphaned, relErr = a.ReleaseJob(ctxFor(t), r.JobID, t0.Add(time.Second)) })
		wg.Wait()
		if relErr != nil {
			t.Fatalf("%s: ReleaseJob: %v", id, relErr)
		}
		switch {
		case holdErr == nil && len(orphaned) != 0:
			t.Fatalf("%s: the joiner holds it, yet the release reported it let go", id)
		case holdErr != nil && !errors.Is(holdErr, ledger.ErrConflict):
			t.Fatalf("%s: AddHolder: %v", id, holdErr)
		case holdErr != nil && !slices.Equal(orphaned, []string{id}):
			t.Fatalf("%s: the hold was refused, yet the release reported %q", id, orphaned)
		}
	}
}

func testLiveHolds(t *testing.T, s ledger.Store) {
	ctx := ctxFor(t)
	for _, id := range []string{"l-b", "l-a", "l-pend", "l-revoked", "l-abandoned"} {
		r := NewRecord(id, t0, t0)
		r.JobID = "" // no first holder
		mustCreate(t, s, r)
	}
	for _, id := range []string{"l-b", "l-a", "l-revoked"} {
		mustActivate(t, s, id, t0.Add(time.Hour))
	}
	if err := s.MarkRevoked(ctx, "l-revoked", t0); err != nil {
		t.Fatal(err)
	}
	if err := s.Abandon(ctx, "l-abandoned", "x"); err != nil {
		t.Fatal(err)
	}
	for _, h := range []ledger.Holder{
		hold("l-b", "job-9", t0), hold("l-a", "job-9", t0.Add(time.Second)), hold("l-pend", "job-3", t0),
		hold("l-revoked", "job-4", t0), hold("l-abandoned", "job-5", t0), hold("l-a", "job-6", t0),
	} {
		if err := s.AddHolder(ctx, h); err != nil && !errors.Is(err, ledger.ErrConflict) {
			t.Fatalf("AddHolder(%s, %s): %v", h.LedgerID, h.JobID, err)
		}
	}
	mustRelease(t, s, "job-6", t0.Add(time.Minute))
	key := func(hs []ledger.Holder) []string {
		var out []string
		for _, h := range hs {
			out = append(out, h.JobID+"/"+h.LedgerID)
		}
		return out
	}
	hs, err := s.LiveHolds(ctx, 100)
	if err != nil {
		t.Fatal(err)
	}
	// By job, then credential; released holds and dead records are left out.
	want := []string{"job-3/l-pend", "job-9/l-a", "job-9/l-b"}
	if got := key(hs); !slices.Equal(got, want) {
		t.Fatalf("LiveHolds = %q, want %q", got, want)
	}
	checkHolder(t, hs[0], hold("l-pend", "job-3", t0))
	if hs, err := s.LiveHolds(ctx, 2); err != nil || len(hs) != 2 {
		t.Fatalf("LiveHolds(limit 2) = %d holds, %v", len(hs), err)
	}
	for _, limit := range []int{0, -1} {
		if _, err := s.LiveHolds(ctx, limit); err == nil {
			t.Errorf("LiveHolds(limit %d) succeeded", limit)
		}
	}
}
