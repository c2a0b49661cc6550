package gitlab

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"gltoken.dev/gltoken/internal/exchange"
)

// DefaultBudgetPerMinute is the default GitLab API budget: below gitlab.com's
// 2,000 authenticated API requests per minute, leaving room for the service
// account's other users. A fifth of it (300) is the revocations' reserve,
// the rest (1,200) is shared by everything else.
const DefaultBudgetPerMinute = 1500

// Budget is the daemon's own allowance of GitLab API requests for one
// service-account token: every HTTP attempt the Client makes with the token
// (mint, revoke, lookups, family listings, sweeps, job polls, self-token
// checks and rotation) takes one unit before it is sent.
//
// The allowance refills continuously at PerMinute per minute, up to PerMinute.
// It is split in two so that neither kind of work can starve the other:
//
//   - revocations (a DELETE, and the lookups a revocation makes to confirm a
//     token is gone or to list its family) have a reserve of a fifth of the budget that
//     nothing else may use, so a burst of mints cannot keep a credential
//     alive past its TTL;
//   - once their reserve is spent, revocations may borrow from the shared
//     part only while more than half of it is left, so a revocation storm
//     (thousands of credentials expiring together) slows down instead of
//     eating the budget new mints need. The reaper retries what was refused.
//
// The budget also follows GitLab's own limit, as far as GitLab tells it.
// GitLab's authenticated API throttle (Rack::Attack, one bucket per user)
// answers 429 with RateLimit-* headers and Retry-After; that holds every
// call of the token until Retry-After. Other answers carry RateLimit-* only
// on GitLab 18.6+ with rate_limiting_headers_for_unthrottled_requests (off
// by default); when they do, RateLimit-Remaining caps the calls sent until
// RateLimit-Reset, so the budget stops before GitLab would throttle. A 429
// without Retry-After is one endpoint's own limit (GitLab's application rate
// limits): that call gets its wait, the others go on.
// A refused call is never sent: its error wraps exchange.ErrBudgetSpent and
// exchange.ErrRateLimited, as an *exchange.RetryAfterError with the wait.
type Budget struct {
	mu        sync.Mutex
	now       func() time.Time
	perMinute float64
	reserve   float64 // the revocations' share of perMinute
	shared    float64 // units left in the shared part
	revoke    float64 // units left in the revocations' reserve
	last      time.Time
	paused    time.Time // no call before this (GitLab said so)

	// What GitLab last said is left in its window (RateLimit-Remaining),
	// less the calls sent since, until the window ends (RateLimit-Reset).
	gitlabLeft  int
	gitlabReset time.Time // zero: GitLab has said nothing (or its window ended)

	sent, refused, pausedN uint64
}

// NewBudget returns a full budget of perMinute GitLab requests per minute
// (perMinute <= 0: DefaultBudgetPerMinute). now is the clock (nil: time.Now).
func NewBudget(perMinute int, now func() time.Time) *Budget {
	if perMinute <= 0 {
		perMinute = DefaultBudgetPerMinute
	}
	if now == nil {
		now = time.Now
	}
	b := &Budget{now: now, perMinute: float64(perMinute)}
	b.reserve = float64(max(perMinute/5, 1))
	if perMinute == 1 {
		b.reserve = 0
	}
	b.shared = b.perMinute - b.reserve
	b.revoke = b.reserve
	b.last = now()
	return b
}

// BudgetStats is what /metrics shows of a Budget.
type BudgetStats struct {
	PerMinute int
	// Remaining is what is left now (shared part plus the revocations' reserve).
	Remaining int
	// GitLabRemaining is GitLab's RateLimit-Remaining for the token's user,
	// less the calls sent since, until its RateLimit-Reset; -1 when GitLab
	// has not said (it sends the header only when it throttles, unless
	// rate_limiting_headers_for_unthrottled_requests is on).
	GitLabRemaining int
	// Sent counts requests the budget let through; Refused those it kept
	// back because it was spent; Paused those kept back because GitLab said
	// its own limit was reached (RateLimit-Remaining: 0 or a 429).
	Sent, Refused, Paused uint64
}

// Stats reports the budget's state.
func (b *Budget) Stats() BudgetStats {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	b.refill(now)
	gl := -1
	if b.gitlabKnown(now) {
		gl = b.gitlabLeft
	}
	return BudgetStats{PerMinute: int(b.perMinute), Remaining: int(b.shared + b.revoke), GitLabRemaining: gl,
		Sent: b.sent, Refused: b.refused, Paused: b.pausedN}
}

// available is how many calls the token can make now, for choosing among
// several tokens: the budget's units, no more than GitLab said is left, and
// none while GitLab holds the token's calls.
func (b *Budget) available() float64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	if now.Before(b.paused) {
		return 0
	}
	b.refill(now)
	n := b.shared + b.revoke
	if b.gitlabKnown(now) {
		n = min(n, float64(b.gitlabLeft))
	}
	return max(n, 0)
}

func (b *Budget) gitlabKnown(now time.Time) bool {
	return !b.gitlabReset.IsZero() && now.Before(b.gitlabReset)
}

func (b *Budget) refill(now time.Time) {
	d := now.Sub(b.last)
	if d <= 0 {
		return
	}
	b.last = now
	per := d.Minutes()
	b.shared = min(b.shared+per*(b.perMinute-b.reserve), b.perMinute-b.reserve)
	b.revoke = min(b.revoke+per*b.reserve, b.reserve)
}

// budgetError is a refusal; it is wrapped by mapError into an
// exchange.RetryAfterError.
type budgetError struct {
	after  time.Duration
	gitlab bool // paused by GitLab's answer rather than spent
}

func (e *budgetError) Error() string {
	if e.gitlab {
		return fmt.Sprintf("GitLab's rate limit is reached, calls paused for %s: %v", e.after, exchange.ErrBudgetSpent)
	}
	return fmt.Sprintf("%v: retry in %s", exchange.ErrBudgetSpent, e.after)
}

func (e *budgetError) Unwrap() []error {
	return []error{exchange.ErrBudgetSpent, exchange.ErrRateLimited}
}

type revocationKey struct{}

// revoking marks ctx as a revocation's: its calls spend the reserve.
func revoking(ctx context.Context) context.Context {
	return context.WithValue(ctx, revocationKey{}, true)
}

// take spends one unit for a request (of a revocation when revoke), or says
// how long to wait.
func (b *Budget) take(revoke bool) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	if now.Before(b.paused) {
		b.pausedN++
		return &budgetError{after: ceilSecond(b.paused.Sub(now)), gitlab: true}
	}
	if b.gitlabKnown(now) && b.gitlabLeft <= 0 {
		// GitLab would answer 429 until its window ends.
		b.pausedN++
		return &budgetError{after: ceilSecond(b.gitlabReset.Sub(now)), gitlab: true}
	}
	b.refill(now)
	sharedCap := b.perMinute - b.reserve
	switch {
	case revoke && b.revoke >= 1:
		b.revoke--
	case revoke && b.shared >= 1 && b.shared > sharedCap/2:
		b.shared--
	case !revoke && b.shared >= 1:
		b.shared--
	default:
		b.refused++
		// Time until one unit of the part this call may use is back.
		rate := sharedCap
		lack := 1 - b.shared
		if revoke && b.reserve > 0 {
			rate, lack = b.reserve, 1-b.revoke
		}
		wait := time.Minute
		if rate > 0 {
			wait = time.Duration(lack / rate * float64(time.Minute))
		}
		return &budgetError{after: ceilSecond(wait)}
	}
	b.sent++
	if b.gitlabKnown(now) {
		b.gitlabLeft--
	}
	return nil
}

// maxGitLabPause bounds how long one answer of GitLab may hold a token's
// calls (a RateLimit-Reset far ahead is a clock gone wrong; GitLab's
// throttle periods are at most an hour by default).
const maxGitLabPause = time.Hour

// observe reads GitLab's RateLimit-* and Retry-After headers of an answer.
func (b *Budget) observe(resp *http.Response) {
	if resp == nil {
		return
	}
	h := resp.Header
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	if left, err := strconv.Atoi(strings.TrimSpace(h.Get("RateLimit-Remaining"))); err == nil && left >= 0 {
		if reset, ok := resetTime(h); ok && reset.After(now) {
			reset = earliest(reset, now.Add(maxGitLabPause))
			if b.gitlabKnown(now) && reset.Equal(b.gitlabReset) {
				// The same window: calls sent since this one was answered
				// are not in its count yet.
				b.gitlabLeft = min(b.gitlabLeft, left)
			} else {
				b.gitlabLeft, b.gitlabReset = left, reset
			}
		}
	}
	if resp.StatusCode != http.StatusTooManyRequests {
		return
	}
	// GitLab's throttle answers 429 with Retry-After (and RateLimit-*): it
	// holds every call of the token's user. GitLab's application rate
	// limits answer 429 without either: one endpoint's own limit, which
	// holds only that call.
	if v, err := strconv.Atoi(strings.TrimSpace(h.Get("Retry-After"))); err == nil && v >= 0 {
		b.paused = later(b.paused, earliest(now.Add(time.Duration(v)*time.Second), now.Add(maxGitLabPause)))
	}
}

func earliest(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// resetTime reads RateLimit-Reset, GitLab's unix time of the window's end.
func resetTime(h http.Header) (time.Time, bool) {
	s, err := strconv.ParseInt(strings.TrimSpace(h.Get("RateLimit-Reset")), 10, 64)
	if err != nil || s <= 0 {
		return time.Time{}, false
	}
	return time.Unix(s, 0), true
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

func ceilSecond(d time.Duration) time.Duration {
	if d <= 0 {
		return time.Second
	}
	return (d + time.Second - 1).Truncate(time.Second)
}
