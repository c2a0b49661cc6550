package gitlab

import (
	"errors"
	"net/http"
	"sync"
	"testing"
	"time"

	"gltoken.dev/gltoken/internal/exchange"
	"gltoken.dev/gltoken/internal/gitlabfake"
	"gltoken.dev/gltoken/internal/ledger"
)

// TestNotFoundIsCachedBriefly: asking again and again for a project that
// does not exist (under an allowed glob) costs one GitLab call per path per
// NotFoundTTL; a project that exists is looked up every time.
func TestNotFoundIsCachedBriefly(t *testing.T) {
	var mu sync.Mutex
	now := time.Now().UTC().Truncate(time.Second)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	s := gitlabfake.Start(t, gitlabfake.Options{})
	svc := s.AddUser("gltoken-svc")
	s.AddProject("platform/lib")
	s.AddMember(svc, "platform", gitlabfake.Maintainer)
	c := newTestClient(t, s.URL(), s.CreatePersonalAccessToken(svc, "gltoken", []string{"api"}, nil), clock)
	gets := func() int {
		n := 0
		for _, r := range s.Requests() {
			if r.Method == http.MethodGet {
				n++
			}
		}
		return n
	}
	for range 20 {
		if _, err := c.ResolveOwner(t.Context(), ledger.ProjectDeployToken, "platform/nope"); !errors.Is(err, exchange.ErrNotFound) {
			t.Fatalf("nonexistent project: %v, want ErrNotFound", err)
		}
	}
	if n := gets(); n != 1 {
		t.Fatalf("20 lookups of a nonexistent project cost %d GitLab calls, want 1", n)
	}
	for range 3 {
		if _, err := c.ResolveOwner(t.Context(), ledger.ProjectDeployToken, "platform/lib"); err != nil {
			t.Fatal(err)
		}
	}
	if n := gets(); n != 4 {
		t.Fatalf("an existing project must be asked every time: %d calls, want 4", n)
	}
	// Created meanwhile: found once the TTL is over.
	s.AddProject("platform/nope")
	mu.Lock()
	now = now.Add(NotFoundTTL)
	mu.Unlock()
	if _, err := c.ResolveOwner(t.Context(), ledger.ProjectDeployToken, "platform/nope"); err != nil {
		t.Fatalf("after the TTL: %v", err)
	}
}

// budgetClient is a Client on the stand-in spending budget b, with the
// stand-in's project platform/lib and a maintainer service account.
func budgetClient(t *testing.T, s *gitlabfake.Server, b *Budget, clock func() time.Time) *Client {
	t.Helper()
	svc := s.AddUser("gltoken-svc")
	s.AddProject("platform/lib")
	s.AddMember(svc, "platform", gitlabfake.Maintainer)
	c, err := New(Config{BaseURL: s.URL(), Token: s.CreatePersonalAccessToken(svc, "gltoken", []string{"api"}, nil),
		Now: clock, Budget: b, RetryWait: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func countMethod(s *gitlabfake.Server, method string) int {
	n := 0
	for _, r := range s.Requests() {
		if r.Method == method {
			n++
		}
	}
	return n
}

// TestBudgetCapsCalls: a budget of 10 a minute lets 8 lookups reach GitLab
// (2 are the revocations' reserve); the 9th is kept back with
// ErrBudgetSpent and a wait; revocations still go through, and a storm of
// them stops at half of the shared part, so mints keep the rest.
func TestBudgetCapsCalls(t *testing.T) {
	var mu sync.Mutex
	now := time.Now().UTC().Truncate(time.Second)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	s := gitlabfake.Start(t, gitlabfake.Options{})
	b := NewBudget(10, clock)
	c := budgetClient(t, s, b, clock)
	ctx := t.Context()
	for i := range 8 {
		if _, err := c.ResolveOwner(ctx, ledger.ProjectDeployToken, "platform/lib"); err != nil {
			t.Fatalf("lookup %d: %v", i, err)
		}
	}
	_, err := c.ResolveOwner(ctx, ledger.ProjectDeployToken, "platform/lib")
	var ra *exchange.RetryAfterError
	if !errors.Is(err, exchange.ErrBudgetSpent) || !errors.Is(err, exchange.ErrRateLimited) || !errors.As(err, &ra) || ra.After < time.Second {
		t.Fatalf("9th lookup: %v, want ErrBudgetSpent with a wait", err)
	}
	if n := countMethod(s, http.MethodGet); n != 8 {
		t.Fatalf("%d lookups reached GitLab, want 8", n)
	}
	// The revocations' reserve (2) is untouched by the lookups. A revocation
	// of a token GitLab does not know costs 2 (DELETE, then the owner's
	// lookup that confirms it is gone), both from the reserve.
	if err := c.Revoke(ctx, exchange.TokenRef{Kind: ledger.ProjectDeployToken, Owner: 1, GitLabID: 100}); errors.Is(err, exchange.ErrBudgetSpent) {
		t.Fatalf("revocation refused: %v", err)
	}
	if err := c.Revoke(ctx, exchange.TokenRef{Kind: ledger.ProjectDeployToken, Owner: 1, GitLabID: 200}); !errors.Is(err, exchange.ErrBudgetSpent) {
		t.Fatalf("2nd revocation with the reserve and the shared part spent: %v, want ErrBudgetSpent", err)
	}
	if n := countMethod(s, http.MethodDelete); n != 1 {
		t.Fatalf("%d revocations reached GitLab, want 1", n)
	}
	st := b.Stats()
	if st.Sent != 10 || st.Refused != 2 || st.Remaining != 0 {
		t.Fatalf("stats %+v, want 10 sent, 2 refused, 0 remaining", st)
	}

	// A minute later all is back. A revocation storm (2 calls each): the
	// reserve (2) and then the shared part (8) down to its half (4): 3
	// revocations, then refused, and 4 lookups are still possible.
	mu.Lock()
	now = now.Add(time.Minute)
	mu.Unlock()
	revoked := 0
	for i := range 20 {
		err := c.Revoke(ctx, exchange.TokenRef{Kind: ledger.ProjectDeployToken, Owner: 1, GitLabID: int64(300 + i)})
		if errors.Is(err, exchange.ErrBudgetSpent) {
			break
		}
		revoked++
	}
	if revoked != 3 {
		t.Fatalf("a revocation storm got %d revocations, want 3 (6 calls: the reserve 2 + half of the shared 8)", revoked)
	}
	for i := range 4 {
		if _, err := c.ResolveOwner(ctx, ledger.ProjectDeployToken, "platform/lib"); err != nil {
			t.Fatalf("lookup %d after the storm: %v", i, err)
		}
	}
}

// TestGitLabRemainingZeroPauses: with GitLab 18.6's headers on unthrottled
// answers, once GitLab answers RateLimit-Remaining: 0 no call is sent until
// its RateLimit-Reset (GitLab would throttle it); then calls go again.
func TestGitLabRemainingZeroPauses(t *testing.T) {
	var mu sync.Mutex
	now := time.Now().UTC().Truncate(time.Minute).Add(10 * time.Second)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	s := gitlabfake.Start(t, gitlabfake.Options{Now: clock})
	s.SetRateLimit(3)
	s.SetRateLimitHeaders(true) // GitLab 18.6+: RateLimit-* on unthrottled answers too
	c := budgetClient(t, s, NewBudget(1000, clock), clock)
	ctx := t.Context()
	for i := range 3 {
		if _, err := c.ResolveOwner(ctx, ledger.ProjectDeployToken, "platform/lib"); err != nil {
			t.Fatalf("lookup %d: %v", i, err)
		}
	}
	before := len(s.Requests())
	var ra *exchange.RetryAfterError
	for _, call := range []func() error{
		func() error { _, err := c.ResolveOwner(ctx, ledger.ProjectDeployToken, "platform/lib"); return err },
		func() error {
			return c.Revoke(ctx, exchange.TokenRef{Kind: ledger.ProjectDeployToken, Owner: 1, GitLabID: 1})
		},
	} {
		if err := call(); !errors.Is(err, exchange.ErrBudgetSpent) || !errors.As(err, &ra) || ra.After != 50*time.Second {
			t.Fatalf("after RateLimit-Remaining: 0: %v, want ErrBudgetSpent and a 50s wait", err)
		}
	}
	if n := len(s.Requests()); n != before {
		t.Fatalf("%d calls reached GitLab while it said none was left", n-before)
	}
	if st := b(c).Stats(); st.Paused != 2 {
		t.Fatalf("stats %+v, want 2 paused", st)
	}
	mu.Lock()
	now = now.Add(50 * time.Second)
	mu.Unlock()
	if _, err := c.ResolveOwner(ctx, ledger.ProjectDeployToken, "platform/lib"); err != nil {
		t.Fatalf("after RateLimit-Reset: %v", err)
	}
}

// TestGitLab429Pauses: GitLab's throttle (429 with Retry-After and
// RateLimit-*) holds every call of the token for its Retry-After; a 429 of
// one endpoint's own limit (GitLab's application rate limits send neither
// header) holds nothing else.
func TestGitLab429Pauses(t *testing.T) {
	var mu sync.Mutex
	now := time.Now().UTC().Truncate(time.Minute).Add(20 * time.Second)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	s := gitlabfake.Start(t, gitlabfake.Options{Now: clock})
	c := budgetClient(t, s, NewBudget(1000, clock), clock)
	ctx := t.Context()
	remove := s.InjectFault(gitlabfake.Fault{Method: http.MethodGet, PathPrefix: "/api/v4/projects/", Status: http.StatusTooManyRequests, Times: 1})
	var ra *exchange.RetryAfterError
	if _, err := c.ResolveOwner(ctx, ledger.ProjectDeployToken, "platform/lib"); !errors.As(err, &ra) || errors.Is(err, exchange.ErrBudgetSpent) || ra.After != time.Minute {
		t.Fatalf("an endpoint's 429: %v, want its own wait (a minute: GitLab names none)", err)
	}
	remove()
	if _, err := c.ResolveOwner(ctx, ledger.ProjectDeployToken, "platform/lib"); err != nil {
		t.Fatalf("after an endpoint's 429 without Retry-After: %v", err)
	}

	s.SetRateLimit(2) // the two calls above spent it: the next is throttled
	if _, err := c.ResolveOwner(ctx, ledger.ProjectDeployToken, "platform/lib"); !errors.As(err, &ra) || errors.Is(err, exchange.ErrBudgetSpent) || ra.After != 40*time.Second {
		t.Fatalf("GitLab's throttle: %v", err)
	}
	n := len(s.Requests())
	if _, err := c.ResolveOwner(ctx, ledger.ProjectDeployToken, "platform/lib"); !errors.Is(err, exchange.ErrBudgetSpent) || !errors.As(err, &ra) || ra.After != 40*time.Second {
		t.Fatalf("after GitLab's throttle with Retry-After 40: %v", err)
	}
	if len(s.Requests()) != n {
		t.Fatal("a call reached GitLab during its Retry-After")
	}
	if st := b(c).Stats(); st.GitLabRemaining != 0 || st.Paused != 1 {
		t.Fatalf("stats %+v, want GitLab's remaining 0 and 1 paused", st)
	}
	mu.Lock()
	now = now.Add(40 * time.Second)
	mu.Unlock()
	if _, err := c.ResolveOwner(ctx, ledger.ProjectDeployToken, "platform/lib"); err != nil {
		t.Fatalf("in GitLab's next window: %v", err)
	}
	if st := b(c).Stats(); st.GitLabRemaining != -1 {
		t.Fatalf("stats %+v: GitLab said nothing of the new window (no headers on a 200 without the flag)", st)
	}
}

func b(c *Client) *Budget { return c.Budget() }
