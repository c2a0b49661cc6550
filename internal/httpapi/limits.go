package httpapi

import (
	"container/list"
	"net"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"gltoken.dev/gltoken/internal/exchange"
)

// The daemon limits by identity, in two places:
//
//   - Before the ID token is verified, all the daemon knows is the peer (a
//     Unix socket's uid, a TCP client's IP), which every job of a runner host
//     or everyone behind one NAT shares. So the only limit there is the
//     FailureGuard: it counts the peer's FAILED requests (malformed, refused
//     ID tokens, unknown paths), never its successful ones. A peer that has
//     spent its failure budget still has every request read and checked: a
//     valid ID token is served as always; only requests that fail again are
//     answered 429 with Retry-After, so a client looping on garbage is told to
//     back off and garbage never blocks a valid job of the same uid or IP.
//   - After verification, MintQuotas bounds what the token proves: mints per
//     job and per source project per minute. The exchange consults it only
//     when a request would mint; a cached credential is never throttled.
//
// Both remember a bounded number of keys and evict the least recently used
// one at a time (never the whole map, which would hand every key a fresh
// budget at once).

// Guard is the pre-verification limit: *FailureGuard implements it.
type Guard interface {
	// Exhausted reports whether peer has spent its failure budget, and how
	// long until it has one failure to spend again.
	Exhausted(peer string) (bool, time.Duration)
	// Failed records one failed request of peer.
	Failed(peer string)
}

// DefaultMaxKeys bounds how many peers, jobs or projects a limiter remembers.
const DefaultMaxKeys = 10000

// FailureGuard is a token bucket of failures per peer.
type FailureGuard struct {
	keys *limiterLRU
	now  func() time.Time
}

// NewFailureGuard lets each peer fail perSecond requests a second, with the
// given burst, before its further failures are answered 429. maxPeers bounds
// the peers remembered (0: DefaultMaxKeys).
func NewFailureGuard(perSecond float64, burst, maxPeers int) *FailureGuard {
	return &FailureGuard{keys: newLimiterLRU(rate.Limit(perSecond), burst, maxPeers), now: time.Now}
}

// Exhausted implements Guard.
func (g *FailureGuard) Exhausted(peer string) (bool, time.Duration) {
	lim, ok := g.keys.peek(guardKey(peer))
	if !ok {
		return false, 0 // never failed (or forgotten): a full budget
	}
	now := g.now()
	tokens := lim.TokensAt(now)
	if tokens >= 1 {
		return false, 0
	}
	return true, waitFor(1-tokens, lim.Limit())
}

// Failed implements Guard.
func (g *FailureGuard) Failed(peer string) {
	g.keys.get(guardKey(peer)).AllowN(g.now(), 1)
}

// Len is how many peers the guard remembers.
func (g *FailureGuard) Len() int { return g.keys.len() }

// MintQuotas bounds mints by what a verified ID token proves: per job and per
// source project, each a token bucket refilled per minute, and the re-mints
// of a job on an owner after a client revoked its credential there. It
// implements exchange.MintLimiter.
type MintQuotas struct {
	jobs, projects, remints *limiterLRU
	now                     func() time.Time
}

var _ exchange.MintLimiter = (*MintQuotas)(nil)

// QuotaConfig sizes MintQuotas. Zero means unlimited.
type QuotaConfig struct {
	PerJobPerMinute     int // mints one job may cause a minute (also the burst)
	PerProjectPerMinute int // mints all jobs of one source project may cause a minute (also the burst)
	// RemintsAfterRevoke: once a client revoked a credential of a job on an
	// owner, the job may mint there again this many times per RemintWindow.
	RemintsAfterRevoke int
	RemintWindow       time.Duration // default 10m
	MaxKeys            int           // jobs, projects and (job, owner) pairs remembered each (0: DefaultMaxKeys)
}

// Reasons a request is answered 429; /metrics counts them and the debug log
// names them.
const (
	ReasonPeerFailures = "peer_failures"
	ReasonJobMints     = exchange.LimitJobMints
	ReasonProjectMints = exchange.LimitProjectMints
	ReasonRemints      = exchange.LimitRemints
	ReasonGitLabBudget = exchange.LimitGitLabBudget
	ReasonGitLab       = exchange.LimitGitLab
	ReasonService      = "service" // any other 429 of the service
)

// NewMintQuotas builds the post-verification quotas.
func NewMintQuotas(c QuotaConfig) *MintQuotas {
	perMinute := func(n int) (rate.Limit, int) {
		if n <= 0 {
			return rate.Inf, 0
		}
		return rate.Limit(float64(n) / 60), n
	}
	jr, jb := perMinute(c.PerJobPerMinute)
	pr, pb := perMinute(c.PerProjectPerMinute)
	window := c.RemintWindow
	if window <= 0 {
		window = 10 * time.Minute
	}
	rr, rb := rate.Inf, 0
	if c.RemintsAfterRevoke > 0 {
		rr, rb = rate.Limit(float64(c.RemintsAfterRevoke)/window.Seconds()), c.RemintsAfterRevoke
	}
	return &MintQuotas{jobs: newLimiterLRU(jr, jb, c.MaxKeys), projects: newLimiterLRU(pr, pb, c.MaxKeys),
		remints: newLimiterLRU(rr, rb, c.MaxKeys), now: time.Now}
}

// AllowMint implements exchange.MintLimiter: it admits one mint for m's job
// and project (and, after a client revoke, its re-mints on m.Owner) or says
// which quota refused it and when to try again. A refusal spends nothing.
func (q *MintQuotas) AllowMint(m exchange.MintSubject) (ok bool, retryAfter time.Duration, reason string) {
	now := q.now()
	var taken []*rate.Reservation
	take := func(lim *rate.Limiter, why string) bool {
		r := lim.ReserveN(now, 1)
		if d := r.DelayFrom(now); d > 0 {
			r.CancelAt(now)
			for _, t := range taken {
				t.CancelAt(now)
			}
			retryAfter, reason = d, why
			return false
		}
		taken = append(taken, r)
		return true
	}
	if !take(q.jobs.get(m.Job), ReasonJobMints) || !take(q.projects.get(m.Project), ReasonProjectMints) {
		return false, retryAfter, reason
	}
	if lim, revoked := q.remints.peek(remintKey(m.Job, m.Owner)); revoked && !take(lim, ReasonRemints) {
		return false, retryAfter, reason
	}
	return true, 0, ""
}

// ClientRevoked implements exchange.MintLimiter: from now on the job's
// re-mints on owner are counted.
func (q *MintQuotas) ClientRevoked(job, owner string) { q.remints.get(remintKey(job, owner)) }

func remintKey(job, owner string) string { return job + "\x00" + owner }

func waitFor(tokens float64, r rate.Limit) time.Duration {
	if r <= 0 {
		return time.Minute
	}
	return time.Duration(tokens / float64(r) * float64(time.Second))
}

// guardKey is what the guard counts by: a Unix peer's uid (its pid changes
// with every process of the same user), a TCP peer's IP (its port changes
// with every connection).
func guardKey(peer string) string {
	if strings.HasPrefix(peer, "uid=") {
		uid, _, _ := strings.Cut(peer, " ")
		return uid
	}
	addr := strings.Fields(peer + " ")[0]
	if host, _, err := net.SplitHostPort(addr); err == nil {
		return host
	}
	return addr
}

// limiterLRU is a bounded map of token buckets: when full, the least
// recently used bucket goes, one at a time.
type limiterLRU struct {
	mu    sync.Mutex
	limit rate.Limit
	burst int
	max   int
	order *list.List // front: most recently used; values are *lruEntry
	byKey map[string]*list.Element
}

type lruEntry struct {
	key string
	lim *rate.Limiter
}

func newLimiterLRU(limit rate.Limit, burst, max int) *limiterLRU {
	if max <= 0 {
		max = DefaultMaxKeys
	}
	return &limiterLRU{limit: limit, burst: burst, max: max, order: list.New(), byKey: map[string]*list.Element{}}
}

// get returns key's bucket, creating a full one (and evicting the least
// recently used bucket when the map is full).
func (l *limiterLRU) get(key string) *rate.Limiter {
	l.mu.Lock()
	defer l.mu.Unlock()
	if e, ok := l.byKey[key]; ok {
		l.order.MoveToFront(e)
		return e.Value.(*lruEntry).lim
	}
	if l.order.Len() >= l.max {
		oldest := l.order.Back()
		l.order.Remove(oldest)
		delete(l.byKey, oldest.Value.(*lruEntry).key)
	}
	lim := rate.NewLimiter(l.limit, l.burst)
	l.byKey[key] = l.order.PushFront(&lruEntry{key: key, lim: lim})
	return lim
}

// peek returns key's bucket without creating one.
func (l *limiterLRU) peek(key string) (*rate.Limiter, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	e, ok := l.byKey[key]
	if !ok {
		return nil, false
	}
	l.order.MoveToFront(e)
	return e.Value.(*lruEntry).lim, true
}

func (l *limiterLRU) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.order.Len()
}
