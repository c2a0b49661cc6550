package exchange_test

import (
	"context"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	gl "gitlab.com/gitlab-org/api/client-go"

	"gltoken.dev/gltoken/internal/exchange"
	"gltoken.dev/gltoken/internal/fingerprint"
	"gltoken.dev/gltoken/internal/gitlab"
	"gltoken.dev/gltoken/internal/gitlabfake"
	"gltoken.dev/gltoken/internal/ledger"
	"gltoken.dev/gltoken/internal/sqlite"
)

// These tests run the reaper and the sweep against the real GitLab adapter,
// the GitLab stand-in and an SQLite ledger.

type countingObserver struct {
	mu       sync.Mutex
	outcomes map[exchange.Outcome]int
}

func (o *countingObserver) Exchanged(exchange.Outcome, ledger.Kind, time.Duration) {}
func (o *countingObserver) Minted(ledger.Kind)                                     {}
func (o *countingObserver) Revoked(_ ledger.Kind, outcome exchange.Outcome) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.outcomes[outcome]++
}
func (o *countingObserver) count(outcome exchange.Outcome) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.outcomes[outcome]
}

type lifeFixture struct {
	gl    *gitlabfake.Server
	pid   int64
	svc   *gitlabfake.User
	c     *gitlab.Client
	store *sqlite.Store
	obs   *countingObserver
	now   time.Time
	real  bool // the clock is time.Now
	mu    sync.Mutex
}

func (f *lifeFixture) clock() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.real {
		return time.Now()
	}
	return f.now
}
func (f *lifeFixture) advance(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.now = f.now.Add(d)
}

func newLifeFixture(t *testing.T) *lifeFixture {
	t.Helper()
	f := &lifeFixture{now: time.Now().UTC().Truncate(time.Second), obs: &countingObserver{outcomes: map[exchange.Outcome]int{}}}
	f.gl = gitlabfake.Start(t, gitlabfake.Options{Now: f.clock})
	f.pid = f.gl.AddProject("platform/deploy").ID
	f.svc = f.gl.AddUser("gltoken-svc")
	f.gl.AddMember(f.svc, "platform/deploy", gitlabfake.Maintainer)
	exp := f.now.AddDate(0, 3, 0)
	token := f.gl.CreatePersonalAccessToken(f.svc, "gltoken", []string{"api"}, &exp)
	var err error
	if f.c, err = gitlab.New(gitlab.Config{BaseURL: f.gl.URL(), Token: token, Now: f.clock}); err != nil {
		t.Fatal(err)
	}
	if f.store, err = sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "state.db")); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.store.Close() })
	return f
}

// mint writes an intent and mints its api-scope project access token; with
// activate it records the result, as the exchange does.
func (f *lifeFixture) mint(t *testing.T, id string, ttl time.Duration, activate bool) exchange.Credential {
	t.Helper()
	ctx := context.Background()
	now := f.clock()
	rec := ledger.Record{ID: id, Kind: ledger.ProjectAccessToken, Owner: f.pid, OwnerPath: "platform/deploy",
		Scopes: []string{"api"}, CreatedAt: now, ExpiresAt: now.Add(ttl), NextAttemptAt: now.Add(2 * time.Minute)}
	if err := f.store.CreateIntent(ctx, rec); err != nil {
		t.Fatal(err)
	}
	cred, err := f.c.Mint(ctx, exchange.MintRequest{Name: "gltoken-" + id, Kind: ledger.ProjectAccessToken, Owner: f.pid, OwnerPath: "platform/deploy",
		Scopes: []string{"api"}, ExpiresAt: now.Add(ttl), AccessLevel: 30})
	if err != nil {
		t.Fatal(err)
	}
	if activate {
		if err := f.store.Activate(ctx, id, cred.GitLabID, cred.Username, fingerprint.Of(cred.Secret), now.Add(ttl)); err != nil {
			t.Fatal(err)
		}
	}
	return cred
}

// selfRotate is what a job holding an api-scope access token can do.
func (f *lifeFixture) selfRotate(t *testing.T, secret string) (int64, string) {
	t.Helper()
	c, err := gl.NewClient(secret, gl.WithBaseURL(f.gl.URL()), gl.WithoutRetries())
	if err != nil {
		t.Fatal(err)
	}
	exp := gl.ISOTime(f.clock().AddDate(0, 0, 365))
	tok, _, err := c.ProjectAccessTokens.RotateProjectAccessTokenSelf("platform/deploy", &gl.RotateProjectAccessTokenOptions{ExpiresAt: &exp})
	if err != nil {
		t.Fatalf("self rotate: %v", err)
	}
	return tok.ID, tok.Token
}

func (f *lifeFixture) live(name string) []gitlabfake.TokenState {
	var out []gitlabfake.TokenState
	for _, s := range f.gl.Tokens() {
		if s.Name == name && !s.Revoked && !s.Deleted {
			out = append(out, s)
		}
	}
	return out
}

func (f *lifeFixture) reaper() *exchange.Reaper {
	return exchange.NewReaper(exchange.ReaperConfig{Interval: time.Second, Now: f.clock, Observer: f.obs}, f.store, f.c, nil)
}

// TestReaperRevokesSelfRotatedFamily (issue 9.1): at the TTL the reaper ends
// the successor a self-rotation made, not only the id it minted.
func TestReaperRevokesSelfRotatedFamily(t *testing.T) {
	f := newLifeFixture(t)
	cred := f.mint(t, "fam1", time.Minute, true)
	f.selfRotate(t, cred.Secret)
	f.advance(time.Minute)
	if _, err := f.reaper().RunOnce(context.Background()); err != nil {
		t.Fatal(err)
	}
	if live := f.live("gltoken-fam1"); len(live) != 0 {
		t.Fatalf("the self-rotated successor survived the reaper: %+v", live)
	}
	rec, _ := f.store.Get(context.Background(), "fam1")
	if rec.State != ledger.Revoked || f.obs.count(exchange.OutcomeEscaped) != 1 {
		t.Fatalf("record %s, escaped %d", rec.State, f.obs.count(exchange.OutcomeEscaped))
	}
}

// TestSweepRevokesEscapedTokens (issue 9.1): the sweep revokes every active
// gltoken-* token the ledger does not hold as live, and nothing else.
func TestSweepRevokesEscapedTokens(t *testing.T) {
	f := newLifeFixture(t)
	ctx := context.Background()
	kept := f.mint(t, "keep", time.Hour, true)
	f.mint(t, "pending", time.Hour, false) // its mint may be finishing: the reaper settles it
	rot := f.mint(t, "rotated", time.Hour, true)
	f.selfRotate(t, rot.Secret) // the ledger holds the old id only
	f.mint(t, "gone", time.Hour, true)
	if err := f.store.MarkRevoked(ctx, "gone", f.clock()); err != nil { // revoked in the ledger, not in GitLab
		t.Fatal(err)
	}
	sw := exchange.NewSweeper(exchange.SweeperConfig{Now: f.clock, Observer: f.obs}, f.store, f.c, f.c)
	n, err := sw.SweepOnce(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n != 2 || f.obs.count(exchange.OutcomeEscaped) != 2 {
		t.Fatalf("sweep revoked %d (escaped metric %d), want 2", n, f.obs.count(exchange.OutcomeEscaped))
	}
	for name, want := range map[string]int{"gltoken-keep": 1, "gltoken-pending": 1, "gltoken-rotated": 0, "gltoken-gone": 0} {
		if got := len(f.live(name)); got != want {
			t.Errorf("%s: %d live, want %d", name, got, want)
		}
	}
	if live := f.live("gltoken-keep"); len(live) != 1 || live[0].ID != kept.GitLabID {
		t.Fatalf("the live credential was touched: %+v", live)
	}
	// A second pass finds nothing more (one listing per owner).
	before := len(f.gl.Requests())
	if n, err := sw.SweepOnce(ctx); err != nil || n != 0 {
		t.Fatalf("second sweep: %d, %v", n, err)
	}
	if calls := len(f.gl.Requests()) - before; calls != 1 {
		t.Fatalf("a sweep of one owner made %d GitLab calls, want 1", calls)
	}
}

// TestReaperKeeps404Unconfirmed (issue 9.4): when the service account can no
// longer see the project, a 404 is not "gone": the record stays live and is
// retried (metric outcome "unconfirmed"), and an intent is not abandoned;
// once the token has passed its own GitLab expiry it is settled.
func TestReaperKeeps404Unconfirmed(t *testing.T) {
	f := newLifeFixture(t)
	ctx := context.Background()
	f.mint(t, "lost", time.Minute, true)
	f.mint(t, "lostintent", time.Minute, false)
	f.gl.RemoveMember(f.svc, "platform/deploy")
	f.advance(3 * time.Minute) // past the TTL and the intent's lease
	if _, err := f.reaper().RunOnce(ctx); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"lost", "lostintent"} {
		rec, _ := f.store.Get(ctx, id)
		if rec.State == ledger.Revoked || rec.State == ledger.Abandoned || rec.Attempts != 1 {
			t.Errorf("%s: %s after %d attempts, want it kept live and retried", id, rec.State, rec.Attempts)
		}
	}
	if f.obs.count(exchange.OutcomeUnconfirmed) != 2 {
		t.Fatalf("unconfirmed = %d, want 2", f.obs.count(exchange.OutcomeUnconfirmed))
	}
	if len(f.live("gltoken-lost")) != 1 {
		t.Fatal("setup: the token should still be live")
	}
	// Past GitLab's own expiry date the token cannot work: settled.
	f.advance(4 * 24 * time.Hour)
	if _, err := f.reaper().RunOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if rec, _ := f.store.Get(ctx, "lost"); rec.State != ledger.Revoked {
		t.Fatalf("lost: %s after GitLab's expiry", rec.State)
	}
	if rec, _ := f.store.Get(ctx, "lostintent"); rec.State != ledger.Abandoned {
		t.Fatalf("lostintent: %s after GitLab's expiry", rec.State)
	}
}

// TestReaperRevokesAtTheTTL (issue 9.8): revocation is scheduled at each
// credential's expiry, not at the next periodic pass: with a one-hour
// interval, a credential expiring in a moment is revoked long before it.
func TestReaperRevokesAtTheTTL(t *testing.T) {
	f := newLifeFixture(t)
	f.mu.Lock()
	f.real = true
	f.mu.Unlock()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r := exchange.NewReaper(exchange.ReaperConfig{Interval: time.Hour, Now: f.clock, Observer: f.obs}, f.store, f.c, nil)
	done := make(chan struct{})
	go func() { defer close(done); r.Run(ctx) }()
	defer func() { cancel(); <-done }()
	// Minted while the reaper sleeps: Schedule wakes it to look at the ledger again.
	time.Sleep(50 * time.Millisecond)
	f.mint(t, "soon", 300*time.Millisecond, true)
	r.Schedule(time.Now().Add(300 * time.Millisecond))
	deadline := time.Now().Add(30 * time.Second) // far below the interval: only scheduling can meet it
	for {
		rec, err := f.store.Get(ctx, "soon")
		if err != nil {
			t.Fatal(err)
		}
		if rec.State == ledger.Revoked {
			if rec.RevokedAt.Before(rec.ExpiresAt) {
				t.Fatalf("revoked at %v, before its TTL %v", rec.RevokedAt, rec.ExpiresAt)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not revoked 30s after its TTL with a one-hour interval: %s", rec.State)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestScheduleWakesOnlyForEarlier: a mint due after the reaper's planned
// look does not wake it (that look finds it), so a busy daemon's mints do
// not each cost a pass over the ledger; one due before it does.
func TestScheduleWakesOnlyForEarlier(t *testing.T) {
	f := newLifeFixture(t)
	f.mu.Lock()
	f.real = true
	f.mu.Unlock()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r := exchange.NewReaper(exchange.ReaperConfig{Interval: time.Hour, Now: f.clock, Observer: f.obs}, f.store, f.c, nil)
	done := make(chan struct{})
	go func() { defer close(done); r.Run(ctx) }()
	defer func() { cancel(); <-done }()
	// Until its first pass is over the reaper is woken; then it sleeps
	// for its interval (nothing is due) and a later time leaves it asleep.
	for deadline := time.Now().Add(30 * time.Second); r.Schedule(time.Now().Add(2 * time.Hour)); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("Schedule of a time after the planned look still wakes the reaper")
		}
	}
	if !r.Schedule(time.Now().Add(time.Minute)) {
		t.Fatal("Schedule of a time before the planned look did not wake the reaper")
	}
}

// BenchmarkRevocationLag (issue 9.8): 2,000 deploy-token credentials minted
// through the GitLab adapter against the stand-in, all expiring at one
// instant; a reaper with the shipped defaults (10s interval, 8 workers)
// revokes them. Reports p50/p99/max lag past the TTL and revocations/s.
func BenchmarkRevocationLag(b *testing.B) {
	const n = 2000
	for range b.N {
		f := &lifeFixture{real: true, obs: &countingObserver{outcomes: map[exchange.Outcome]int{}}}
		f.gl = gitlabfake.Start(b, gitlabfake.Options{})
		f.gl.SetRateLimit(1 << 30)
		f.pid = f.gl.AddProject("platform/deploy").ID
		f.svc = f.gl.AddUser("gltoken-svc")
		f.gl.AddMember(f.svc, "platform/deploy", gitlabfake.Maintainer)
		token := f.gl.CreatePersonalAccessToken(f.svc, "gltoken", []string{"api"}, nil)
		var err error
		if f.c, err = gitlab.New(gitlab.Config{BaseURL: f.gl.URL(), Token: token}); err != nil {
			b.Fatal(err)
		}
		if f.store, err = sqlite.Open(context.Background(), filepath.Join(b.TempDir(), "state.db")); err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		r := exchange.NewReaper(exchange.ReaperConfig{}, f.store, f.c, nil)
		done := make(chan struct{})
		go func() { defer close(done); r.Run(ctx) }()
		exp := time.Now().Add(20 * time.Second).Truncate(time.Second)
		for i := range n {
			id := "lag" + strconv.Itoa(i)
			now := time.Now()
			if err := f.store.CreateIntent(ctx, ledger.Record{ID: id, Kind: ledger.ProjectDeployToken, Owner: f.pid, OwnerPath: "platform/deploy",
				Scopes: []string{"read_repository"}, CreatedAt: now, ExpiresAt: exp, NextAttemptAt: exp}); err != nil {
				b.Fatal(err)
			}
			cred, err := f.c.Mint(ctx, exchange.MintRequest{Name: "gltoken-" + id, Kind: ledger.ProjectDeployToken, Owner: f.pid,
				OwnerPath: "platform/deploy", Scopes: []string{"read_repository"}, ExpiresAt: exp})
			if err != nil {
				b.Fatal(err)
			}
			if err := f.store.Activate(ctx, id, cred.GitLabID, cred.Username, fingerprint.Of(cred.Secret), exp); err != nil {
				b.Fatal(err)
			}
			r.Schedule(exp)
		}
		if time.Now().After(exp) {
			b.Fatal("minting took longer than the TTL")
		}
		b.ResetTimer()
		var lags []time.Duration
		var last time.Time
		for len(lags) < n {
			lags = lags[:0]
			for i := range n {
				rec, err := f.store.Get(ctx, "lag"+strconv.Itoa(i))
				if err != nil {
					b.Fatal(err)
				}
				if rec.State == ledger.Revoked {
					lags = append(lags, rec.RevokedAt.Sub(rec.ExpiresAt))
					if rec.RevokedAt.After(last) {
						last = rec.RevokedAt
					}
				}
			}
			if len(lags) < n {
				time.Sleep(200 * time.Millisecond)
			}
		}
		cancel()
		<-done
		slices.Sort(lags)
		p := func(q float64) time.Duration { return lags[min(len(lags)-1, int(q*float64(len(lags))))] }
		b.ReportMetric(p(0.5).Seconds(), "p50_lag_s")
		b.ReportMetric(p(0.99).Seconds(), "p99_lag_s")
		b.ReportMetric(lags[len(lags)-1].Seconds(), "max_lag_s")
		b.ReportMetric(float64(n)/last.Sub(exp).Seconds(), "revocations/s")
	}
}
