package gitlab

import (
	"errors"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"gltoken.dev/gltoken/internal/exchange"
	"gltoken.dev/gltoken/internal/gitlabfake"
	"gltoken.dev/gltoken/internal/ledger"
)

// These tests run a Client with several service-account tokens
// (gitlab.token_files) against the stand-in, which throttles per user as
// GitLab does, and count the calls each token made.

// accounts is a stand-in with two service accounts, each Maintainer of
// platform, each with a token named after it.
type accounts struct {
	s      *gitlabfake.Server
	clock  func() time.Time
	set    func(time.Time)
	users  [2]*gitlabfake.User
	tokens [2]string
	ids    [2]int64
}

func newAccounts(t *testing.T) *accounts {
	t.Helper()
	var mu sync.Mutex
	now := time.Now().UTC().Truncate(time.Minute).Add(5 * time.Second)
	a := &accounts{
		clock: func() time.Time { mu.Lock(); defer mu.Unlock(); return now },
		set:   func(t time.Time) { mu.Lock(); defer mu.Unlock(); now = t },
	}
	a.s = gitlabfake.Start(t, gitlabfake.Options{Now: a.clock})
	a.s.AddProject("platform/lib")
	for i, name := range []string{"svc-a", "svc-b"} {
		a.users[i] = a.s.AddUser(name)
		a.s.AddMember(a.users[i], "platform", gitlabfake.Maintainer)
		a.tokens[i] = a.s.CreatePersonalAccessToken(a.users[i], name, []string{"api"}, nil)
		st, ok := a.s.TokenByName(name)
		if !ok {
			t.Fatalf("token %s not found", name)
		}
		a.ids[i] = st.ID
	}
	return a
}

// client returns a Client with both tokens, each with a budget of
// perMinute; usable, when set, says which may be chosen.
func (a *accounts) client(t *testing.T, perMinute int, usable func(i int) bool, onRejected func(i int)) *Client {
	t.Helper()
	var toks []Token
	for i := range a.tokens {
		tok := Token{Secret: func() string { return a.tokens[i] }, Budget: NewBudget(perMinute, a.clock)}
		if usable != nil {
			tok.Usable = func() bool { return usable(i) }
		}
		toks = append(toks, tok)
	}
	c, err := New(Config{BaseURL: a.s.URL(), Tokens: toks, Now: a.clock, RetryWait: time.Millisecond, OnRejected: onRejected})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// calls counts the API calls each token made, and the 429s GitLab answered.
func (a *accounts) calls() (perToken [2]int, throttled int) {
	for _, r := range a.s.Requests() {
		for i, id := range a.ids {
			if r.TokenID == id {
				perToken[i]++
			}
		}
		if r.Status == http.StatusTooManyRequests {
			throttled++
		}
	}
	return perToken, throttled
}

// named counts the stand-in's tokens called name.
func (a *accounts) named(name string) int {
	n := 0
	for _, tok := range a.s.Tokens() {
		if tok.Name == name {
			n++
		}
	}
	return n
}

func lookup(t *testing.T, c *Client) error {
	t.Helper()
	_, err := c.ResolveOwner(t.Context(), ledger.ProjectDeployToken, "platform/lib")
	return err
}

// TestTokensByRemainingQuota: with GitLab's headers on every answer (18.6's
// flag), each call goes with the token that has most left, so two accounts
// of 10 calls a minute serve 20 lookups without one 429 from GitLab; the
// 21st is kept back until GitLab's window ends, and nothing is sent.
func TestTokensByRemainingQuota(t *testing.T) {
	a := newAccounts(t)
	a.s.SetRateLimit(10)
	a.s.SetRateLimitHeaders(true)
	c := a.client(t, 1000, nil, nil)
	for i := range 20 {
		if err := lookup(t, c); err != nil {
			t.Fatalf("lookup %d: %v", i+1, err)
		}
	}
	perToken, throttled := a.calls()
	if perToken != [2]int{10, 10} || throttled != 0 {
		t.Fatalf("calls per token %v, 429s %d; want 10 and 10, no 429", perToken, throttled)
	}
	err := lookup(t, c)
	var ra *exchange.RetryAfterError
	if !errors.Is(err, exchange.ErrBudgetSpent) || !errors.As(err, &ra) || ra.After != 55*time.Second {
		t.Fatalf("21st lookup: %v, want ErrBudgetSpent until GitLab's window ends (55s)", err)
	}
	if p, _ := a.calls(); p != perToken {
		t.Fatalf("a call was sent with both accounts spent: %v", p)
	}
	for i, st := range c.TokenStats() {
		if st.Budget.GitLabRemaining != 0 || st.Budget.Sent != 10 || !st.Usable || !strings.HasPrefix(st.Fingerprint, "sha256:") ||
			strings.Contains(st.Fingerprint, a.tokens[i]) {
			t.Errorf("token %d stats %+v", i, st)
		}
	}
	a.set(a.clock().Add(55 * time.Second))
	if err := lookup(t, c); err != nil {
		t.Fatalf("in GitLab's next window: %v", err)
	}
}

// TestThrottledTokenHandsOver: GitLab's default sends no RateLimit-*
// headers until it throttles. When it throttles one account (its other
// users spent its bucket), the call is sent again with the other token, the
// caller sees no 429, and the throttled token gets no call until its
// Retry-After has passed.
func TestThrottledTokenHandsOver(t *testing.T) {
	a := newAccounts(t)
	a.s.SetRateLimit(5)
	// Someone else used account a's bucket up.
	for range 5 {
		req, _ := http.NewRequest(http.MethodGet, a.s.URL()+"/api/v4/projects/1", nil)
		req.Header.Set("PRIVATE-TOKEN", a.tokens[0])
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	before, _ := a.calls()
	c := a.client(t, 1000, nil, nil)
	// A deploy-token create (a POST with a body) is the first call: sent
	// with a, throttled, sent again with b. It is made once.
	if _, err := c.Mint(t.Context(), exchange.MintRequest{Name: "gltoken-x", Kind: ledger.ProjectDeployToken,
		Owner: 1, OwnerPath: "platform/lib", Scopes: []string{"read_repository"}, ExpiresAt: a.clock().Add(time.Hour)}); err != nil {
		t.Fatalf("mint: %v", err)
	}
	for i := range 4 {
		if err := lookup(t, c); err != nil {
			t.Fatalf("lookup %d: %v", i+1, err)
		}
	}
	after, throttled := a.calls()
	if got := [2]int{after[0] - before[0], after[1] - before[1]}; got != [2]int{1, 5} || throttled != 1 {
		t.Fatalf("calls per token %v, 429s %d; want a throttled once, then everything with b", got, throttled)
	}
	if n := a.named("gltoken-x"); n != 1 {
		t.Fatalf("%d deploy tokens made, want 1", n)
	}
	// Its window over (Retry-After 55), a is back: the next call goes with
	// it (it has more of its own budget left than b).
	a.set(a.clock().Add(55 * time.Second))
	if err := lookup(t, c); err != nil {
		t.Fatal(err)
	}
	if p, _ := a.calls(); p[0]-after[0] != 1 {
		t.Fatalf("after a's Retry-After: calls %v, want one more with a", p)
	}
}

// TestRejectedTokenOutOfRotation: a token GitLab answers 401 to is reported
// (OnRejected) and the call goes with the other token; once out of rotation
// (Usable false) the token is not tried at all. With none usable, calls
// still go, so the caller learns GitLab's answer.
func TestRejectedTokenOutOfRotation(t *testing.T) {
	a := newAccounts(t)
	var out [2]atomic.Bool
	var rejected [2]atomic.Int32
	c := a.client(t, 1000, func(i int) bool { return !out[i].Load() }, func(i int) {
		rejected[i].Add(1)
		out[i].Store(true) // as the daemon's keeper does once GitLab confirms it
	})
	a.s.RevokeToken(gitlabfake.KindPersonal, a.ids[0])
	if _, err := c.Mint(t.Context(), exchange.MintRequest{Name: "gltoken-y", Kind: ledger.ProjectDeployToken,
		Owner: 1, OwnerPath: "platform/lib", Scopes: []string{"read_repository"}, ExpiresAt: a.clock().Add(time.Hour)}); err != nil {
		t.Fatalf("mint with a revoked first token: %v", err)
	}
	for range 3 {
		if err := lookup(t, c); err != nil {
			t.Fatal(err)
		}
	}
	// A revoked token authenticates nothing, so the stand-in names no token
	// for its one call: the 401.
	unauthorized := 0
	for _, r := range a.s.Requests() {
		if r.Status == http.StatusUnauthorized {
			unauthorized++
		}
	}
	if p, _ := a.calls(); p != [2]int{0, 4} || unauthorized != 1 || rejected[0].Load() != 1 || rejected[1].Load() != 0 {
		t.Fatalf("calls per token %v, 401s %d, rejected %d/%d; want one 401 with a, reported, then only b",
			p, unauthorized, rejected[0].Load(), rejected[1].Load())
	}
	if n := a.named("gltoken-y"); n != 1 {
		t.Fatalf("%d deploy tokens made, want 1", n)
	}
	if st := c.TokenStats(); st[0].Usable || !st[1].Usable {
		t.Fatalf("token stats %+v, want a out of rotation", st)
	}
	a.s.RevokeToken(gitlabfake.KindPersonal, a.ids[1])
	if err := lookup(t, c); !errors.Is(err, ErrTokenInvalid) {
		t.Fatalf("with both tokens revoked: %v, want ErrTokenInvalid", err)
	}
	if err := lookup(t, c); !errors.Is(err, ErrTokenInvalid) {
		t.Fatalf("with no token in rotation: %v, want GitLab's 401 (ErrTokenInvalid)", err)
	}
}

// TestAccountSpendsItsOwnBudget: a Keeper's calls about its token go with
// the secret it names and spend that token's budget.
func TestAccountSpendsItsOwnBudget(t *testing.T) {
	a := newAccounts(t)
	c := a.client(t, 1000, nil, nil)
	info, err := c.Account(1).SelfToken(t.Context(), a.tokens[1])
	if err != nil || info.ID != a.ids[1] {
		t.Fatalf("SelfToken of b: %+v, %v", info, err)
	}
	st := c.TokenStats()
	if st[0].Budget.Sent != 0 || st[1].Budget.Sent != 1 {
		t.Fatalf("budgets %+v, want only b's spent", st)
	}
	if p, _ := a.calls(); p != [2]int{0, 1} {
		t.Fatalf("calls per token %v", p)
	}
	// Unbound, SelfToken finds the token by its secret.
	if _, err := c.SelfToken(t.Context(), a.tokens[0]); err != nil {
		t.Fatal(err)
	}
	if st := c.TokenStats(); st[0].Budget.Sent != 1 {
		t.Fatalf("budgets %+v, want a's spent by its own check", st)
	}
}
