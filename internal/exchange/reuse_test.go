package exchange

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"strings"
	"sync"
	"testing"
	"time"

	"gltoken.dev/gltoken/internal/idtoken"
)

// job adds the ID token of another job of project 7 (platform/app on main)
// whose token expires after ttl, and returns its name in the verifier.
func (f *fixture) job(id string, ttl time.Duration) string {
	claims := maps.Clone(f.ver.tokens["job-token"].Claims)
	claims["job_id"] = id
	name := "job-" + id
	f.ver.tokens[name] = &idtoken.Token{Issuer: "https://gitlab.example.com", Subject: "project_path:platform/app:ref_type:branch:ref:main",
		ID: "jti-job-" + id, IssuedAt: f.clock.Now(), Expiry: f.clock.Now().Add(ttl), Claims: claims}
	return name
}

func TestReuseOneCreateForManyJobs(t *testing.T) {
	var audit bytes.Buffer
	f := newFixtureWith(t, testPolicy, slog.New(slog.NewJSONHandler(&audit, nil)))
	const jobs = 50
	names := make([]string, jobs)
	for i := range names {
		names[i] = f.job(fmt.Sprint(100+i), 2*time.Hour)
	}
	got := make([]*Issued, jobs)
	var wg sync.WaitGroup
	for i, name := range names {
		wg.Go(func() {
			iss, err := f.exchange(name, "https://gitlab.example.com/platform/lib.git", "read_repository")
			if err != nil {
				t.Error(err)
				return
			}
			got[i] = iss
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	if n := f.minter.mints.Load(); n != 1 {
		t.Fatalf("GitLab creates for %d jobs of one project = %d, want 1", jobs, n)
	}
	reused := 0
	for _, iss := range got {
		if iss.AccessToken != got[0].AccessToken || iss.LedgerID != got[0].LedgerID {
			t.Fatal("jobs of one project got different credentials")
		}
		if iss.Reused {
			reused++
		}
	}
	if reused != jobs-1 {
		t.Errorf("reused hand-outs = %d, want %d", reused, jobs-1)
	}
	hs, err := f.store.Holders(context.Background(), got[0].LedgerID)
	if err != nil || len(hs) != jobs {
		t.Fatalf("holders = %d, %v; want %d (one per job)", len(hs), err, jobs)
	}
	// Each hand-out's audit event names the job that received it.
	jobsSeen := map[string]bool{}
	for line := range strings.Lines(audit.String()) {
		var ev map[string]any
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatal(err)
		}
		if ev["msg"] == "exchange" && ev["ledger_id"] == got[0].LedgerID {
			jobsSeen[fmt.Sprint(ev["job_id"])] = true
		}
	}
	if len(jobsSeen) != jobs {
		t.Errorf("audit events name %d jobs, want %d", len(jobsSeen), jobs)
	}
	// The same job asking again gets the same credential without a new hold.
	again, err := f.exchange(names[7], "https://gitlab.example.com/platform/lib.git", "read_repository")
	if err != nil || again.AccessToken != got[0].AccessToken {
		t.Fatalf("a job asking again: %v", err)
	}
	if hs, _ := f.store.Holders(context.Background(), got[0].LedgerID); len(hs) != jobs {
		t.Errorf("holders after a repeat = %d, want %d", len(hs), jobs)
	}
}

// A credential is never handed to a job whose ID token expires before it:
// it would outlive that job.
func TestReuseNeverOutlivesAJob(t *testing.T) {
	f := newFixture(t)
	long, err := f.exchange(f.job("200", 2*time.Hour), "https://gitlab.example.com/platform/lib.git", "read_repository")
	if err != nil {
		t.Fatal(err)
	}
	shortTok := f.job("201", 40*time.Minute)
	short, err := f.exchange(shortTok, "https://gitlab.example.com/platform/lib.git", "read_repository")
	if err != nil {
		t.Fatal(err)
	}
	if short.AccessToken == long.AccessToken {
		t.Fatal("a job whose ID token expires in 40m got a credential that lives 1h")
	}
	if exp := f.ver.tokens[shortTok].Expiry; short.ExpiresAt.After(exp) {
		t.Fatalf("credential expires %s, after the job's ID token (%s)", short.ExpiresAt, exp)
	}
	// A later job with a long token may take either; it never causes a third create.
	if _, err := f.exchange(f.job("202", 2*time.Hour), "https://gitlab.example.com/platform/lib.git", "read_repository"); err != nil {
		t.Fatal(err)
	}
	if n := f.minter.mints.Load(); n != 2 {
		t.Fatalf("creates = %d, want 2", n)
	}
}

func TestReuseOnlyForTheSameGrant(t *testing.T) {
	f := newFixture(t)
	a, err := f.exchange(f.job("300", 2*time.Hour), "https://gitlab.example.com/platform/lib.git", "read_repository")
	if err != nil {
		t.Fatal(err)
	}
	// Other scopes, another target, another project: each its own credential.
	b, err := f.exchange(f.job("301", 2*time.Hour), "https://gitlab.example.com/platform/lib.git", "read_repository", "read_registry")
	if err != nil || b.AccessToken == a.AccessToken {
		t.Fatalf("other scopes shared a credential (%v)", err)
	}
	c, err := f.exchange(f.job("302", 2*time.Hour), "https://gitlab.example.com/platform/libs/x.git", "read_repository")
	if err != nil || c.AccessToken == a.AccessToken {
		t.Fatalf("another target shared a credential (%v)", err)
	}
	other := f.job("303", 2*time.Hour)
	f.ver.tokens[other].Claims["project_id"] = "8"
	d, err := f.exchange(other, "https://gitlab.example.com/platform/lib.git", "read_repository")
	if err != nil || d.AccessToken == a.AccessToken {
		t.Fatalf("another project's job shared a credential (%v)", err)
	}
	if n := f.minter.mints.Load(); n != 4 {
		t.Fatalf("creates = %d, want 4", n)
	}
}

// A credential revoked through /v1/revoke (RFC 7009) is never handed out again.
func TestReuseNotAfterRevoke(t *testing.T) {
	f := newFixture(t)
	a, err := f.exchange(f.job("400", 2*time.Hour), "https://gitlab.example.com/platform/lib.git", "read_repository")
	if err != nil {
		t.Fatal(err)
	}
	if err := f.svc.Revoke(context.Background(), "r2", a.AccessToken, "test"); err != nil {
		t.Fatal(err)
	}
	b, err := f.exchange(f.job("401", 2*time.Hour), "https://gitlab.example.com/platform/lib.git", "read_repository")
	if err != nil || b.AccessToken == a.AccessToken {
		t.Fatalf("after revoke: %v, same credential %v", err, b != nil && b.AccessToken == a.AccessToken)
	}
}

func TestReuseJobOptsOut(t *testing.T) {
	pol := strings.Replace(testPolicy, "      ttl: 1h\n", "      ttl: 1h\n    reuse: job\n", 1)
	f := newFixtureWith(t, pol, nil)
	for _, id := range []string{"500", "501", "502"} {
		if _, err := f.exchange(f.job(id, 2*time.Hour), "https://gitlab.example.com/platform/lib.git", "read_repository"); err != nil {
			t.Fatal(err)
		}
	}
	if n := f.minter.mints.Load(); n != 3 {
		t.Fatalf("creates with reuse: job = %d, want 3 (one per job)", n)
	}
}

// A credential shared by two jobs outlives the first job's end and ends
// with the last.
func TestReuseEndsWithTheLastHolder(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	a, err := f.exchange(f.job("600", 2*time.Hour), "https://gitlab.example.com/platform/lib.git", "read_repository")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.exchange(f.job("601", 2*time.Hour), "https://gitlab.example.com/platform/lib.git", "read_repository"); err != nil {
		t.Fatal(err)
	}
	r := NewReaper(ReaperConfig{Interval: time.Second, Now: f.clock.Now}, f.store, f.minter, f.svc.Cache())
	if ended, err := r.EndJob(ctx, "600", ""); err != nil || len(ended) != 0 {
		t.Fatalf("EndJob(600) = %v, %v; want nothing ended (job 601 holds it)", ended, err)
	}
	if ended, err := r.EndJob(ctx, "601", ""); err != nil || len(ended) != 1 || ended[0] != a.LedgerID {
		t.Fatalf("EndJob(601) = %v, %v; want [%s]", ended, err, a.LedgerID)
	}
	if f.minter.liveCount() != 0 {
		t.Fatalf("live at GitLab after the last holder ended = %d", f.minter.liveCount())
	}
	// A new job does not get the ended credential.
	c, err := f.exchange(f.job("602", 2*time.Hour), "https://gitlab.example.com/platform/lib.git", "read_repository")
	if err != nil || c.AccessToken == a.AccessToken {
		t.Fatalf("after the last holder ended: %v", err)
	}
}
