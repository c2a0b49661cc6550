package exchange

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"gltoken.dev/gltoken/internal/ledger"
)

// Reaper ends credentials at their TTL and settles intents whose mint never
// finished (a crash, a lost answer). It claims due records from the store, so
// several replicas can run one each.
type Reaper struct {
	store     ledger.Store
	minter    Minter
	cache     *Cache // optional: the service's, to drop what is revoked
	interval  time.Duration
	lease     time.Duration
	batch     int
	maxDelay  time.Duration
	mintLease time.Duration
	now       func() time.Time
	log       *slog.Logger
	audit     *slog.Logger
	obs       Observer
	workers   int
	wake      chan struct{}
	pool      *Pool

	// planned is when Run next looks at the ledger; zero while it is not
	// asleep (a pass, and the look at NextDue after it).
	mu      sync.Mutex
	planned time.Time
}

// ReaperConfig configures NewReaper.
type ReaperConfig struct {
	Interval time.Duration // how often it looks for due records (default 10s)
	Batch    int           // records claimed at a time (default 100)
	MaxDelay time.Duration // longest back-off after failures (default 5m)
	// MintLease must equal the service's (default DefaultMintLease): an
	// intent younger than it may still be turning into a token at GitLab.
	MintLease time.Duration
	Now       func() time.Time
	Logger    *slog.Logger
	Audit     *slog.Logger
	Observer  Observer
	// Workers settle claimed records at once (default 8), so that many
	// credentials expiring together are revoked at their TTL, not one by one.
	Workers int
	// Pool is the service's access-token pool (Service.Pool): its slots are
	// rotated at their TTL instead of revoked. Without it they are revoked.
	Pool *Pool
}

// NewReaper builds a reaper over the service's store and minter. cache is
// the service's (Service.Cache), from which it drops what it revokes; nil
// when no service runs in this process.
func NewReaper(cfg ReaperConfig, store ledger.Store, m Minter, cache *Cache) *Reaper {
	r := &Reaper{store: store, minter: m, cache: cache, interval: cfg.Interval, batch: cfg.Batch,
		maxDelay: cfg.MaxDelay, mintLease: cfg.MintLease, now: cfg.Now, log: cfg.Logger, audit: cfg.Audit, obs: cfg.Observer,
		workers: cfg.Workers, wake: make(chan struct{}, 1), pool: cfg.Pool}
	if r.workers <= 0 {
		r.workers = 8
	}
	if r.interval <= 0 {
		r.interval = 10 * time.Second
	}
	if r.batch <= 0 {
		r.batch = 100
	}
	if r.mintLease <= 0 {
		r.mintLease = DefaultMintLease
	}
	if r.maxDelay <= 0 {
		r.maxDelay = 5 * time.Minute
	}
	// A claim should outlast one pass over a batch of GitLab calls; if it
	// does not, another replica revokes again, which is harmless. It is
	// also how late a dead replica's claims are taken up by the others.
	r.lease = max(30*time.Second, 3*r.interval)
	if r.now == nil {
		r.now = time.Now
	}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	if r.audit == nil {
		r.audit = r.log
	}
	if r.obs == nil {
		r.obs = nopObserver{}
	}
	return r
}

// Run reaps until ctx ends. Revocation is scheduled at each credential's
// expiry: after every pass it sleeps until the earliest NextAttemptAt in the
// ledger (shared by every replica; the store's claims keep two replicas
// from settling one record), or until Schedule names an earlier time, and
// at most one interval (the safety net).
func (r *Reaper) Run(ctx context.Context) {
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		r.setPlanned(time.Time{})
		if _, err := r.RunOnce(ctx); err != nil && ctx.Err() == nil {
			r.log.Error("reaper pass failed", "error", err)
		}
		wait := r.interval
		if next, ok, err := r.store.NextDue(ctx); err == nil && ok {
			// A little after it, so that the record is due by the store's clock.
			wait = min(wait, max(next.Sub(r.now())+time.Millisecond, time.Millisecond))
		}
		r.setPlanned(r.now().Add(wait))
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return
		case <-r.wake:
			if !timer.Stop() {
				<-timer.C
			}
		case <-timer.C:
		}
	}
}

func (r *Reaper) setPlanned(t time.Time) {
	r.mu.Lock()
	r.planned = t
	r.mu.Unlock()
}

// Schedule tells a running reaper that a record is due at at (a credential
// just minted): it looks again then if that is earlier than it planned, and
// reports whether it woke it. A credential due after the planned look
// changes nothing (that look finds it through NextDue), so a busy daemon's
// mints do not each cost a pass over the ledger. While the reaper is not
// asleep, it is woken: its look at NextDue may have come before the record.
func (r *Reaper) Schedule(at time.Time) bool {
	r.mu.Lock()
	planned := r.planned
	r.mu.Unlock()
	if !planned.IsZero() && !at.Before(planned) {
		return false
	}
	select {
	case r.wake <- struct{}{}:
	default:
	}
	return true
}

// RunOnce claims and settles due records until none are left; it returns
// how many it settled or deferred. The records of a batch are settled by
// Workers goroutines at once.
func (r *Reaper) RunOnce(ctx context.Context) (int, error) {
	n := 0
	for {
		recs, err := r.store.ClaimDue(ctx, r.now(), r.lease, r.batch)
		if err != nil {
			return n, fmt.Errorf("claim due records: %w", err)
		}
		work := make(chan ledger.Record)
		var wg sync.WaitGroup
		for range min(r.workers, len(recs)) {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for rec := range work {
					r.settle(ctx, rec)
				}
			}()
		}
		for _, rec := range recs {
			if ctx.Err() != nil {
				break
			}
			work <- rec
			n++
		}
		close(work)
		wg.Wait()
		if ctx.Err() != nil {
			return n, ctx.Err()
		}
		if len(recs) < r.batch {
			return n, nil
		}
	}
}

// ReconcilePending releases the claims and settles every pending intent now,
// whatever its lease. Only for a store no other daemon uses (the embedded
// one): at start-up, every claim and pending intent there belongs to a
// process that died. A token found by the
// intent's name is revoked; an intent with no token is abandoned once its
// lease is over, and until then left for the reaper (GitLab may still be
// finishing the dead process's request).
func (r *Reaper) ReconcilePending(ctx context.Context) (int, error) {
	// Claims the dead process held would delay revocations by their lease.
	if _, err := r.store.ReleaseClaims(ctx); err != nil {
		return 0, fmt.Errorf("release claims: %w", err)
	}
	recs, err := r.store.ListPending(ctx)
	if err != nil {
		return 0, fmt.Errorf("list pending intents: %w", err)
	}
	for _, rec := range recs {
		r.settle(ctx, rec)
	}
	return len(recs), nil
}

// settle settles rec at its TTL (or its intent's lease): one reaper action,
// with a request id of its own.
func (r *Reaper) settle(ctx context.Context, rec ledger.Record) {
	r.settleAs(ctx, rec, OutcomeRevoked, backgroundID(actionReaper))
}

// settleAs settles rec; a revoked Active credential is recorded with outcome
// revoked (the metric's label and the audit event's outcome). Every audit
// event of it carries requestID.
func (r *Reaper) settleAs(ctx context.Context, rec ledger.Record, revoked Outcome, requestID string) {
	var err error
	outcome := revoked
	switch rec.State {
	case ledger.Pending:
		outcome, err = r.reconcile(ctx, rec, requestID)
	case ledger.Active:
		if r.pool != nil && IsPoolSlot(rec.ID) {
			// Rotated, not revoked: the secret dies at its TTL, the bot
			// stays. The pool drops the cache entries itself, under its lock.
			outcome, err = r.pool.Retire(ctx, rec, false)
			if err == nil {
				if outcome == slotNotDue || outcome == slotAlready {
					return
				}
				ev := auditEvent{RequestID: requestID, Outcome: outcome}
				ev.fromRecord(rec)
				r.obs.Revoked(rec.Kind, outcome)
				r.audit.LogAttrs(ctx, slog.LevelInfo, "revocation", ev.attrs()...)
				return
			}
			break
		}
		var escaped int
		escaped, err = revokeFamily(ctx, r.minter, TokenRef{Kind: rec.Kind, Owner: rec.Owner, GitLabID: rec.GitLabID, Name: tokenName(rec.ID)})
		if escaped > 0 {
			r.escaped(ctx, rec, escaped, requestID)
		}
		if errors.Is(err, ErrRevokeUnconfirmed) && !r.now().Before(deadInGitLab(rec)) {
			// The owner is out of sight, but the token has passed its own
			// GitLab expiry: it cannot work any more.
			outcome, err = OutcomeExpiredUnconfirmed, nil
		}
		if err == nil {
			err = r.store.MarkRevoked(ctx, rec.ID, r.now())
		}
	default:
		return
	}
	if outcome == outcomePending {
		r.log.Debug("intent has no token yet; looking again when its lease ends", "ledger_id", rec.ID)
		return
	}
	if r.cache != nil {
		r.cache.forgetLedgerID(rec.ID)
	}
	ev := auditEvent{RequestID: requestID, Outcome: outcome}
	ev.fromRecord(rec)
	if err != nil {
		delay := r.backoff(rec.Attempts + 1)
		if rerr := r.store.RetryLater(ctx, rec.ID, r.now().Add(delay), err.Error()); rerr != nil {
			r.log.Error("reaper could not record a failed attempt", "request_id", requestID, "ledger_id", rec.ID, "error", rerr)
		}
		// Retried: a revocation that is not confirmed is never taken as
		// gone, so the record stays live.
		ev.Outcome, ev.Detail = OutcomeFailed, fmt.Sprintf("%v (attempt %d, next in %s)", err, rec.Attempts+1, delay)
		if errors.Is(err, ErrRevokeUnconfirmed) {
			ev.Outcome = OutcomeUnconfirmed
		}
		r.obs.Revoked(rec.Kind, ev.Outcome)
		r.audit.LogAttrs(ctx, slog.LevelWarn, "revocation", ev.attrs()...)
		return
	}
	r.obs.Revoked(rec.Kind, outcome)
	r.audit.LogAttrs(ctx, slog.LevelInfo, "revocation", ev.attrs()...)
}

// reconcile settles an intent: the credential was perhaps created before the
// daemon died or the answer was lost, so look for it by its name.
func (r *Reaper) reconcile(ctx context.Context, rec ledger.Record, requestID string) (Outcome, error) {
	ref, found, err := r.minter.FindByName(ctx, rec.Kind, rec.Owner, tokenName(rec.ID))
	if errors.Is(err, ErrNotFound) {
		// GitLab also answers 404 when the owner is no longer visible to the
		// service account, and a token made for the intent would still work:
		// never abandon on that alone, unless any such token has expired.
		if !deadInGitLab(rec).IsZero() && !r.now().Before(deadInGitLab(rec)) {
			return OutcomeAbandoned, r.store.Abandon(ctx, rec.ID, "owner not visible in GitLab, and any token of the intent has expired")
		}
		return Outcome{}, fmt.Errorf("find intent %s by name: %w: %w", rec.ID, ErrRevokeUnconfirmed, err)
	}
	if err != nil {
		return Outcome{}, fmt.Errorf("find intent %s by name: %w", rec.ID, err)
	}
	if !found {
		if end := rec.CreatedAt.Add(r.mintLease); r.now().Before(end) {
			next := end // look again when the lease ends, or at the TTL if sooner
			if rec.ExpiresAt.After(r.now()) && rec.ExpiresAt.Before(end) {
				next = rec.ExpiresAt
			}
			if err := r.store.RetryLater(ctx, rec.ID, next, "no token of that name yet; looking again at the TTL or when the mint's lease ends"); err != nil {
				return Outcome{}, err
			}
			return outcomePending, nil
		}
		return OutcomeAbandoned, r.store.Abandon(ctx, rec.ID, "reconciled: no token of that name in GitLab")
	}
	ref.Name = tokenName(rec.ID)
	escaped, err := revokeFamily(ctx, r.minter, ref)
	if escaped > 0 {
		r.escaped(ctx, rec, escaped, requestID)
	}
	if err != nil {
		return Outcome{}, err
	}
	return OutcomeReconciledRevoked, r.store.MarkRevoked(ctx, rec.ID, r.now())
}

// escaped records successors of rec's token that rotated themselves out of
// the ledger and were revoked with it, under the request id of the action
// that revoked it.
func (r *Reaper) escaped(ctx context.Context, rec ledger.Record, n int, requestID string) {
	ev := auditEvent{RequestID: requestID, Outcome: OutcomeEscaped, Detail: fmt.Sprintf("%d token(s) of the credential's family (self-rotated successors) revoked with it", n)}
	ev.fromRecord(rec)
	for range n {
		r.obs.Revoked(rec.Kind, OutcomeEscaped)
	}
	r.audit.LogAttrs(ctx, slog.LevelWarn, "escaped credential revoked", ev.attrs()...)
}

// backoff doubles from the interval up to maxDelay, with jitter so replicas
// and records do not retry in lockstep.
func (r *Reaper) backoff(attempt int) time.Duration {
	d := r.interval
	for i := 1; i < attempt && d < r.maxDelay; i++ {
		d *= 2
	}
	d = min(d, r.maxDelay)
	return d/2 + rand.N(d/2+1)
}
