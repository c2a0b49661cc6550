package exchange

import (
	"context"
	"fmt"
	"maps"
	"sync"
	"testing"
	"time"

	"gltoken.dev/gltoken/internal/idtoken"
	"gltoken.dev/gltoken/internal/ledger"
)

// fakeJobs answers job statuses (or errors) and counts the calls.
type fakeJobs struct {
	mu     sync.Mutex
	status map[string]string
	err    map[string]error
	calls  map[string]int
}

func (f *fakeJobs) JobStatus(_ context.Context, projectID, jobID string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls[jobID]++
	if err := f.err[jobID]; err != nil {
		return "", err
	}
	return f.status[jobID], nil
}

func (f *fakeJobs) set(job, status string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.status[job], f.err[job] = status, err
}

func TestJobWatchPoll(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	jobs := &fakeJobs{status: map[string]string{}, err: map[string]error{}, calls: map[string]int{}}
	ids := map[string]string{}
	for _, job := range []string{"21", "22", "23", "24"} {
		claims := maps.Clone(f.ver.tokens["job-token"].Claims)
		claims["job_id"] = job
		claims["project_id"] = "1" + job // one credential each: no reuse across these jobs
		f.ver.tokens["tok-"+job] = &idtoken.Token{Issuer: "https://gitlab.example.com", Subject: "s", ID: "jti-" + job,
			IssuedAt: f.clock.Now(), Expiry: f.clock.Now().Add(time.Hour), Claims: claims}
		iss, err := f.exchange("tok-"+job, "https://gitlab.example.com/platform/lib.git", "read_repository")
		if err != nil {
			t.Fatal(err)
		}
		ids[job] = iss.LedgerID
		jobs.set(job, "running", nil)
	}
	jobs.set("21", "success", nil)
	jobs.set("22", "", fmt.Errorf("%w: GitLab answered 502", ErrUnavailable))
	jobs.set("23", "", fmt.Errorf("%w: 403", ErrForbidden))
	r := NewReaper(ReaperConfig{Interval: time.Second, Now: f.clock.Now}, f.store, f.minter, f.svc.Cache())
	w := NewJobWatch(JobWatchConfig{Interval: 30 * time.Second, Now: f.clock.Now}, f.store, r, jobs)

	// Nothing was heard of any job: all four are asked about, once each.
	if n, err := w.PollOnce(ctx); err != nil || n != 4 {
		t.Fatalf("first poll asked about %d jobs, %v; want 4", n, err)
	}
	state := func(job string) ledger.State {
		rec, err := f.store.Get(ctx, ids[job])
		if err != nil {
			t.Fatal(err)
		}
		return rec.State
	}
	want := map[string]ledger.State{"21": ledger.Revoked, "22": ledger.Active, "23": ledger.Active, "24": ledger.Active}
	for job, st := range want {
		if got := state(job); got != st {
			t.Errorf("job %s: credential %s, want %s (a 5xx or 403 must end nothing)", job, got, st)
		}
	}
	// Within the interval, only the jobs without an answer are asked again.
	f.clock.Add(10 * time.Second)
	if n, _ := w.PollOnce(ctx); n != 2 {
		t.Fatalf("second poll asked about %d jobs, want 2 (the 502 and the 403)", n)
	}
	// A webhook event says job 24 runs: the poll leaves it alone for HookQuiet.
	if err := w.Event(ctx, JobEvent{ProjectID: "7", JobID: "24", Status: "running"}); err != nil {
		t.Fatal(err)
	}
	f.clock.Add(30 * time.Second)
	jobs.set("22", "canceled", nil)
	if n, _ := w.PollOnce(ctx); n != 2 {
		t.Fatalf("third poll asked about %d jobs, want 2 (22 and 23; 24 was heard of)", n)
	}
	if state("22") != ledger.Revoked {
		t.Fatalf("job 22 canceled: credential %s", state("22"))
	}
	// The job's end by event; a late "running" does not bring it back.
	if err := w.Event(ctx, JobEvent{ProjectID: "7", JobID: "24", Status: "failed"}); err != nil {
		t.Fatal(err)
	}
	if state("24") != ledger.Revoked {
		t.Fatalf("job 24 failed: credential %s", state("24"))
	}
	_ = w.Event(ctx, JobEvent{ProjectID: "7", JobID: "24", Status: "running"})
	if running, status, err := w.Running(ctx, "7", "24"); err != nil || running || status != "failed" {
		t.Fatalf("Running(24) = %v %q %v, want finished", running, status, err)
	}
	if jobs.calls["21"] != 1 {
		t.Fatalf("job 21 asked about %d times after it ended, want once", jobs.calls["21"])
	}
}
