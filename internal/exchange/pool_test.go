package exchange_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"gltoken.dev/gltoken/internal/exchange"
	"gltoken.dev/gltoken/internal/gitlabfake"
	"gltoken.dev/gltoken/internal/idtoken"
	"gltoken.dev/gltoken/internal/ledger"
	"gltoken.dev/gltoken/internal/policy"
)

// These tests run the access-token pool through the exchange and the reaper
// against the real GitLab adapter, the stand-in and an SQLite ledger, with a
// fake clock.

// poolPolicy gives each job its own credential (reuse: job), so that the
// pool's tests see one hand-out per job; TestPoolSharedByTheProject shares.
const poolPolicy = `
rules:
  - name: app-pushes-deploy
    reuse: job
    match:
      project_path: platform/app
    allow:
      projects: [platform/deploy]
      scopes: [read_repository, write_repository]
      ttl: 30m
      access_level: developer
`

// anyJob accepts "job-N" as the ID token of job N of platform/app, valid
// for an hour from when it is first seen.
type anyJob struct{ f *lifeFixture }

func (v anyJob) Verify(_ context.Context, raw string) (*idtoken.Token, error) {
	n, ok := strings.CutPrefix(raw, "job-")
	if !ok {
		return nil, fmt.Errorf("%w: not a test job", idtoken.ErrSignature)
	}
	now := v.f.clock()
	return &idtoken.Token{Issuer: v.f.gl.URL(), Subject: "project_path:platform/app:ref_type:branch:ref:main", ID: "jti-" + n,
		IssuedAt: now, Expiry: now.Add(time.Hour),
		Claims: map[string]string{"project_path": "platform/app", "project_id": "7", "ref": "main", "job_id": n, "pipeline_id": "1"}}, nil
}

type poolFixture struct {
	*lifeFixture
	svc    *exchange.Service
	reaper *exchange.Reaper
}

func newPoolFixture(t *testing.T, f *lifeFixture) *poolFixture {
	t.Helper()
	return newPoolFixtureWith(t, f, poolPolicy)
}

func newPoolFixtureWith(t *testing.T, f *lifeFixture, policyText string) *poolFixture {
	t.Helper()
	pol, err := policy.Parse([]byte(policyText), "policy.yaml", policy.Options{GitLabURL: f.gl.URL()})
	if err != nil {
		t.Fatal(err)
	}
	svc, err := exchange.New(exchange.Config{GitLabURL: f.gl.URL(), MaxTTL: time.Hour, Now: f.clock},
		anyJob{f}, func() *policy.Policy { return pol }, f.c, f.store)
	if err != nil {
		t.Fatal(err)
	}
	if svc.Pool() == nil {
		t.Fatal("no pool although the store and the GitLab adapter support it")
	}
	r := exchange.NewReaper(exchange.ReaperConfig{Interval: time.Second, Now: f.clock, Observer: f.obs, Pool: svc.Pool()}, f.store, f.c, svc.Cache())
	return &poolFixture{lifeFixture: f, svc: svc, reaper: r}
}

func (p *poolFixture) push(job int) (*exchange.Issued, error) {
	return p.svc.Exchange(context.Background(), exchange.Request{RequestID: "r", SubjectToken: "job-" + strconv.Itoa(job),
		Resources: []string{p.gl.URL() + "/platform/deploy.git"}, Scopes: []string{"write_repository"}})
}

func (p *poolFixture) reap(t *testing.T) {
	t.Helper()
	if _, err := p.reaper.RunOnce(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// gitWorks runs the real git against the stand-in with the credential.
func gitWorks(t *testing.T, gl *gitlabfake.Server, user, secret string) bool {
	t.Helper()
	u, _ := url.Parse(gl.URL())
	u.User = url.UserPassword(user, secret)
	u.Path = "/platform/deploy.git"
	cmd := exec.Command("git", "ls-remote", u.String())
	cmd.Env = append(cmd.Environ(), "GIT_TERMINAL_PROMPT=0", "GIT_ASKPASS=", "GIT_CONFIG_NOSYSTEM=1", "HOME="+t.TempDir())
	return cmd.Run() == nil
}

// TestPoolBoundsBotUsers (#10.3): 1,000 sequential push jobs on one target,
// each credential overlapping the next (a new job every 16 minutes, 30-minute
// TTL), make at most two GitLab tokens, i.e. two bot users, ever; every
// secret dies at its TTL (rotated away: it no longer works at git), and no
// job is refused.
func TestPoolBoundsBotUsers(t *testing.T) {
	p := newPoolFixture(t, newLifeFixture(t))
	var earlier []*exchange.Issued
	for job := 1; job <= 1000; job++ {
		got, err := p.push(job)
		if err != nil {
			t.Fatalf("job %d: %v", job, err)
		}
		if got.Kind != ledger.ProjectAccessToken || !exchange.IsPoolSlot(got.LedgerID) {
			t.Fatalf("job %d got %s %s, want a pool slot", job, got.Kind, got.LedgerID)
		}
		if job <= 4 {
			if !gitWorks(t, p.gl, got.Username, got.AccessToken) {
				t.Fatalf("job %d: the handed-out secret does not work at git", job)
			}
			earlier = append(earlier, got)
		}
		p.advance(16 * time.Minute)
		p.reap(t)
		if job == 4 {
			// Jobs 1-3 are past their TTL: their secrets were rotated away.
			for i, e := range earlier[:3] {
				if gitWorks(t, p.gl, e.Username, e.AccessToken) {
					t.Fatalf("job %d's secret works at git after its TTL", i+1)
				}
			}
		}
	}
	st := p.gl.Stats()
	if st.AccessTokenCreates > 2 || st.BotUsers > 2 || p.gl.BotUsersOf("platform/deploy") > 2 {
		t.Fatalf("stand-in: %+v, %d bot users on the target; want at most 2 creates and 2 bot users", st, p.gl.BotUsersOf("platform/deploy"))
	}
	// One rotate per hand-out of an idle slot (jobs less creates) and one
	// per TTL reached (every job but the last).
	if want := 1000 - st.AccessTokenCreates + 999; st.AccessTokenRotates != want {
		t.Fatalf("%d rotates, want %d: one per hand-out and one per TTL", st.AccessTokenRotates, want)
	}
	t.Logf("1000 push jobs: %d creates, %d rotates, %d bot users", st.AccessTokenCreates, st.AccessTokenRotates, st.BotUsers)
	// The sweep takes the pool's idle tokens for its own.
	sw := exchange.NewSweeper(exchange.SweeperConfig{Now: p.clock, Observer: p.obs}, p.store, p.c, p.c)
	if n, err := sw.SweepOnce(context.Background()); err != nil || n != 0 {
		t.Fatalf("sweep revoked %d pool tokens (%v), want 0", n, err)
	}
	if live := p.live("gltoken-" + earlierSlot(earlier)); len(live) != 1 {
		t.Fatalf("slot has %d live tokens, want 1", len(live))
	}
}

func earlierSlot(e []*exchange.Issued) string { return e[0].LedgerID }

// TestPoolExhausted: while both slots hold secrets of live jobs, a third
// job is refused with temporarily_unavailable and a Retry-After until the
// first TTL, and no third bot user is made.
func TestPoolExhausted(t *testing.T) {
	p := newPoolFixture(t, newLifeFixture(t))
	for job := 1; job <= 2; job++ {
		if _, err := p.push(job); err != nil {
			t.Fatal(err)
		}
	}
	p.advance(time.Minute)
	_, err := p.push(3)
	var e *exchange.Error
	if !errors.As(err, &e) || e.Code != exchange.CodeUnavailable || e.RetryAfter < 28*time.Minute || e.RetryAfter > 30*time.Minute {
		t.Fatalf("third job: %v, want temporarily_unavailable with Retry-After ~29m", err)
	}
	if st := p.gl.Stats(); st.BotUsers != 2 {
		t.Fatalf("%d bot users, want 2", st.BotUsers)
	}
	p.advance(30 * time.Minute)
	p.reap(t)
	if _, err := p.push(3); err != nil {
		t.Fatalf("after the TTL: %v", err)
	}
}

// TestPoolLostRotateAnswer: a rotation whose answer is lost, at the TTL (the
// reaper) and at a hand-out, loses track of nothing: the successor is found
// by name and becomes the idle slot; the old secret is dead; the bot stays.
func TestPoolLostRotateAnswer(t *testing.T) {
	p := newPoolFixture(t, newLifeFixture(t))
	ctx := context.Background()
	first, err := p.push(1)
	if err != nil {
		t.Fatal(err)
	}
	rec, _ := p.store.Get(ctx, first.LedgerID)
	p.advance(31 * time.Minute)
	remove := p.gl.InjectFault(gitlabfake.Fault{Method: http.MethodPost,
		PathPrefix: fmt.Sprintf("/api/v4/projects/%d/access_tokens/%d/rotate", p.pid, rec.GitLabID), LoseResponse: true, Times: 1})
	p.reap(t)
	remove()
	after, _ := p.store.Get(ctx, first.LedgerID)
	live := p.live("gltoken-" + first.LedgerID)
	if after.State != ledger.Active || len(live) != 1 || after.GitLabID != live[0].ID || after.GitLabID == rec.GitLabID || after.SecretSHA256 != "" {
		t.Fatalf("after a lost rotate: record %+v, live %+v", after, live)
	}
	if gitWorks(t, p.gl, first.Username, first.AccessToken) {
		t.Fatal("the secret works after its TTL")
	}
	// A hand-out whose rotate answer is lost: the job is asked to retry,
	// and the retry gets the same bot.
	remove = p.gl.InjectFault(gitlabfake.Fault{Method: http.MethodPost,
		PathPrefix: fmt.Sprintf("/api/v4/projects/%d/access_tokens/%d/rotate", p.pid, after.GitLabID), LoseResponse: true, Times: 1})
	_, err = p.push(2)
	remove()
	var e *exchange.Error
	if !errors.As(err, &e) || e.Code != exchange.CodeUnavailable {
		t.Fatalf("hand-out with a lost answer: %v, want temporarily_unavailable", err)
	}
	got, err := p.push(2)
	if err != nil {
		t.Fatalf("retry: %v", err)
	}
	if got.LedgerID != first.LedgerID || !gitWorks(t, p.gl, got.Username, got.AccessToken) {
		t.Fatalf("retry got %s (want the slot %s) or a secret git refuses", got.LedgerID, first.LedgerID)
	}
	if st := p.gl.Stats(); st.AccessTokenCreates != 1 || st.BotUsers != 1 {
		t.Fatalf("stand-in %+v, want 1 create and 1 bot user", st)
	}
}

// TestPoolSurvivesRestart: the pool lives in the ledger. A new service on
// the same store (a restart, with no ledger key: the idle successor's
// secret was never kept) renews the same slot with the service account's
// token instead of creating a bot user.
func TestPoolSurvivesRestart(t *testing.T) {
	f := newLifeFixture(t)
	p := newPoolFixture(t, f)
	first, err := p.push(1)
	if err != nil {
		t.Fatal(err)
	}
	p.advance(31 * time.Minute)
	p.reap(t)

	p2 := newPoolFixture(t, f) // a restarted daemon: new cache, new pool
	got, err := p2.push(2)
	if err != nil {
		t.Fatal(err)
	}
	if got.LedgerID != first.LedgerID || got.Username != first.Username || !gitWorks(t, f.gl, got.Username, got.AccessToken) {
		t.Fatalf("after restart: slot %s user %s, want %s %s", got.LedgerID, got.Username, first.LedgerID, first.Username)
	}
	// A handed-out slot stays handed across a restart: the next job does
	// not rotate it away under job 2, it gets the second slot.
	p3 := newPoolFixture(t, f)
	third, err := p3.push(3)
	if err != nil {
		t.Fatal(err)
	}
	if third.LedgerID == got.LedgerID || !gitWorks(t, f.gl, got.Username, got.AccessToken) {
		t.Fatal("a restarted pool rotated a slot a live job holds")
	}
	if st := f.gl.Stats(); st.AccessTokenCreates != 2 || st.BotUsers != 2 {
		t.Fatalf("stand-in %+v, want 2 creates", st)
	}
}

// TestPoolClientRevokeRotates: a client's RFC 7009 revocation of a pooled
// credential rotates the slot at once (the secret dies, the bot stays).
func TestPoolClientRevokeRotates(t *testing.T) {
	p := newPoolFixture(t, newLifeFixture(t))
	got, err := p.push(1)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.svc.Revoke(context.Background(), "r", got.AccessToken, "test"); err != nil {
		t.Fatal(err)
	}
	if gitWorks(t, p.gl, got.Username, got.AccessToken) {
		t.Fatal("the revoked secret still works at git")
	}
	next, err := p.push(2)
	if err != nil {
		t.Fatal(err)
	}
	if next.LedgerID != got.LedgerID || next.AccessToken == got.AccessToken {
		t.Fatalf("job 2 got slot %s, want the revoked-and-rotated %s", next.LedgerID, got.LedgerID)
	}
	if st := p.gl.Stats(); st.BotUsers != 1 {
		t.Fatalf("%d bot users, want 1", st.BotUsers)
	}
}

// TestPoolCrashAfterRotate: a daemon that died after GitLab rotated a slot
// and before the ledger recorded it leaves the record on the old (revoked)
// id. The sweep does not revoke the pool's successor meanwhile, and the
// reaper, refused by GitLab ("Token already revoked"), finds the successor
// by name and makes it the idle slot: no bot user is lost or added.
func TestPoolCrashAfterRotate(t *testing.T) {
	p := newPoolFixture(t, newLifeFixture(t))
	ctx := context.Background()
	first, err := p.push(1)
	if err != nil {
		t.Fatal(err)
	}
	rec, _ := p.store.Get(ctx, first.LedgerID)
	if _, err := p.c.Rotate(ctx, exchange.TokenRef{Kind: rec.Kind, Owner: rec.Owner, GitLabID: rec.GitLabID, Name: "gltoken-" + rec.ID}, p.clock().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	sw := exchange.NewSweeper(exchange.SweeperConfig{Now: p.clock, Observer: p.obs}, p.store, p.c, p.c)
	if n, err := sw.SweepOnce(ctx); err != nil || n != 0 {
		t.Fatalf("sweep revoked %d (%v), want 0", n, err)
	}
	p.advance(31 * time.Minute)
	p.reap(t)
	after, _ := p.store.Get(ctx, first.LedgerID)
	live := p.live("gltoken-" + first.LedgerID)
	if after.State != ledger.Active || len(live) != 1 || after.GitLabID != live[0].ID || after.SecretSHA256 != "" {
		t.Fatalf("after the crash: record %+v, live %+v", after, live)
	}
	if _, err := p.push(2); err != nil {
		t.Fatal(err)
	}
	if st := p.gl.Stats(); st.AccessTokenCreates != 1 || st.BotUsers != 1 {
		t.Fatalf("stand-in %+v, want 1 create and 1 bot user", st)
	}
}

// TestPoolSharedByTheProject: with reuse: project (the default) the push
// jobs of one project share a slot's secret, so many concurrent jobs need
// neither a third bot user nor a 503; a slot whose earlier holders all
// ended still serves (its secret ends at its TTL, not at job end), and the
// ledger records every job that held it, the late one too.
func TestPoolSharedByTheProject(t *testing.T) {
	p := newPoolFixtureWith(t, newLifeFixture(t), strings.Replace(poolPolicy, "    reuse: job\n", "", 1))
	const jobs = 20
	got := make([]*exchange.Issued, jobs)
	var wg sync.WaitGroup
	for i := range jobs {
		wg.Go(func() {
			iss, err := p.push(i + 1)
			if err != nil {
				t.Errorf("job %d: %v", i+1, err)
				return
			}
			got[i] = iss
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	for _, g := range got {
		if g.AccessToken != got[0].AccessToken {
			t.Fatal("concurrent push jobs of one project got different secrets")
		}
	}
	if !gitWorks(t, p.gl, got[0].Username, got[0].AccessToken) {
		t.Fatal("the shared secret does not work at git")
	}
	for i := range jobs {
		if _, err := p.reaper.EndJob(context.Background(), strconv.Itoa(i+1), ""); err != nil {
			t.Fatal(err)
		}
	}
	late, err := p.push(jobs + 1)
	if err != nil {
		t.Fatalf("a job after the others ended: %v", err)
	}
	if !gitWorks(t, p.gl, late.Username, late.AccessToken) {
		t.Fatal("the late job's secret does not work at git")
	}
	if rec, err := p.store.Get(context.Background(), late.LedgerID); err != nil || rec.State != ledger.Active {
		t.Fatalf("the slot after its jobs ended: %+v, %v; want active", rec, err)
	}
	hs, err := p.store.Holders(context.Background(), late.LedgerID)
	if err != nil {
		t.Fatal(err)
	}
	held := map[string]bool{}
	for _, h := range hs {
		held[h.JobID] = h.Holding()
	}
	for i := range jobs {
		if holding, ok := held[strconv.Itoa(i+1)]; !ok || holding {
			t.Errorf("job %d: recorded %v, holding %v; want recorded and let go", i+1, ok, holding)
		}
	}
	if !held[strconv.Itoa(jobs+1)] {
		t.Errorf("the late job's hold is not recorded: %+v", hs)
	}
	if st := p.gl.Stats(); st.BotUsers > 2 || st.AccessTokenCreates > 2 {
		t.Fatalf("stand-in %+v: want at most 2 bot users", st)
	}
	t.Logf("%d concurrent push jobs and a late one: %+v", jobs, p.gl.Stats())
}
