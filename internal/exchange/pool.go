package exchange

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"gltoken.dev/gltoken/internal/fingerprint"
	"gltoken.dev/gltoken/internal/idtoken"
	"gltoken.dev/gltoken/internal/ledger"
)

// The access-token pool: project and group access tokens are not created
// per mint but kept in a small pool per (kind, owner, role, scopes) — at
// most Slots GitLab tokens, so at most Slots bot users — and renewed with
// GitLab's rotate API (same bot user, new secret, old secret dead at once).
//
// A slot is one ledger record (id "pool-<hash>-<n>", GitLab name
// "gltoken-" + id) that stays Active across rotations; ledger.SlotStore
// moves it to each new GitLab id. Its state is durable in the record:
//   - handed: SecretSHA256 is the secret a job holds, ExpiresAt its TTL;
//   - idle: SecretSHA256 is "" (the successor's secret is known to nobody),
//     ExpiresAt is when the reaper rotates it again so that the bot's GitLab
//     expiry date stays ahead and the token stays rotatable.
//
// Handing out an idle slot rotates it (the job gets a secret nobody saw
// before, expiring at its TTL); at that TTL the reaper rotates it again
// (the job's secret dies, the slot is idle). Nothing is revoked in normal
// operation, so no bot user is left behind. A rotate is not idempotent: a
// lost answer is reconciled by listing the family by name; a member with a
// new id is the slot's successor (pool tokens never have the api or
// self_rotate scope, so only the service account rotates them) and becomes
// the idle slot. When a slot cannot be rotated at its TTL it is revoked, as
// any credential is: no secret outlives its TTL.

// Rotator is implemented by minters that can rotate a project or group
// access token by id, authenticated as the service account (internal/gitlab's
// Client). The successor keeps the name and bot user; Username may be left
// empty (the caller knows it).
type Rotator interface {
	Rotate(ctx context.Context, ref TokenRef, expiresAt time.Time) (Credential, error)
}

// DefaultPoolSlots is how many GitLab access tokens (bot users) a pool
// keeps at most per kind, owner, role and scopes.
const DefaultPoolSlots = 2

// DefaultPoolIdle is how long an idle slot waits before the reaper rotates
// it again to keep its GitLab expiry date ahead.
const DefaultPoolIdle = 24 * time.Hour

// maxSlotIndex bounds the slot numbers of one pool: a slot revoked (it could
// not be rotated, or an administrator revoked it) is replaced by the next.
const maxSlotIndex = 64

// poolPrefix starts every slot's ledger id; newLedgerID never makes one.
// The stores know it too: a slot is never let go when its jobs end.
const poolPrefix = ledger.SlotIDPrefix

// IsPoolSlot reports whether a ledger id is an access-token pool slot.
func IsPoolSlot(id string) bool { return ledger.IsSlotID(id) }

// Pool keeps the access-token slots. The service builds it (Service.Pool)
// when its store implements ledger.SlotStore and its minter Rotator; the
// reaper renews slots through it. Safe for concurrent use.
type Pool struct {
	store ledger.Store
	slots ledger.SlotStore
	// locker, on a store replicas share, serialises each pool's decisions
	// across them; within the process, locks does.
	locker ledger.SlotLocker
	m      Minter
	rot    Rotator
	cache  *Cache
	size   int
	idle   time.Duration
	now    func() time.Time
	log    *slog.Logger
	audit  *slog.Logger
	obs    Observer

	mu    sync.Mutex
	locks map[string]*sync.Mutex // by pool hash: one rotation of a pool at a time in this process
}

func newPool(cfg Config, store ledger.Store, m Minter, cache *Cache) *Pool {
	ss, ok := store.(ledger.SlotStore)
	rot, ok2 := m.(Rotator)
	if !ok || !ok2 || cfg.PoolSlots < 0 {
		return nil
	}
	p := &Pool{store: store, slots: ss, m: m, rot: rot, cache: cache, size: cfg.PoolSlots, idle: cfg.PoolIdle,
		now: cfg.Now, log: cfg.Logger, audit: cfg.Audit, obs: cfg.Observer, locks: map[string]*sync.Mutex{}}
	p.locker, _ = store.(ledger.SlotLocker)
	if p.size == 0 {
		p.size = DefaultPoolSlots
	}
	if p.idle <= 0 {
		p.idle = DefaultPoolIdle
	}
	return p
}

// pools reports whether req is served from the pool: a project or group
// access token without the api or self_rotate scope (a token that can
// rotate itself makes family members the pool did not make).
func (p *Pool) pools(req MintRequest) bool {
	if p == nil || req.Owner <= 0 {
		return false
	}
	if req.Kind != ledger.ProjectAccessToken && req.Kind != ledger.GroupAccessToken {
		return false
	}
	return !slices.Contains(req.Scopes, "api") && !slices.Contains(req.Scopes, "self_rotate")
}

// poolHash names a pool: kind, owner id, role and scopes (sorted).
func poolHash(req MintRequest) string {
	sc := slices.Clone(req.Scopes)
	slices.Sort(sc)
	h := sha256.Sum256([]byte(fmt.Sprintf("%s\x00%d\x00%d\x00%s", req.Kind, req.Owner, req.AccessLevel, strings.Join(sc, " "))))
	return ledgerIDEncoding.EncodeToString(h[:10])
}

func slotID(hash string, n int) string { return poolPrefix + hash + "-" + strconv.Itoa(n) }

// hashOf is the pool hash of a slot id.
func hashOf(id string) string {
	s := strings.TrimPrefix(id, poolPrefix)
	if i := strings.LastIndexByte(s, '-'); i >= 0 {
		return s[:i]
	}
	return s
}

// lock takes pool hash's lock: one decision about its slots at a time in
// this process and, on a store replicas share, across them (a slot rotated
// by two replicas at once, or a free slot counted by both, is what the pool
// must never see). The process's own lock comes first, so a replica holds
// at most one database lock per pool.
func (p *Pool) lock(ctx context.Context, hash string) (func(), error) {
	p.mu.Lock()
	l, ok := p.locks[hash]
	if !ok {
		l = &sync.Mutex{}
		p.locks[hash] = l
	}
	p.mu.Unlock()
	l.Lock()
	if p.locker == nil {
		return l.Unlock, nil
	}
	unlock, err := p.locker.LockSlots(ctx, hash)
	if err != nil {
		l.Unlock()
		return nil, err
	}
	return func() { unlock(); l.Unlock() }, nil
}

func (p *Pool) idleUntil() time.Time { return p.now().Add(p.idle).Truncate(time.Second) }

// acquire hands out a credential for req from the pool: an idle slot
// rotated to a fresh secret expiring at req.ExpiresAt, or a new slot while
// the pool has fewer than its size. base carries the requester's facts for
// a new slot's record. It returns the slot's ledger id.
func (p *Pool) acquire(ctx context.Context, req MintRequest, base ledger.Record, lease time.Duration) (string, Credential, error) {
	hash := poolHash(req)
	unlock, err := p.lock(ctx, hash)
	if err != nil {
		return "", Credential{}, &Error{Code: CodeUnavailable, Description: "the ledger is unavailable; nothing was minted", RetryAfter: 5 * time.Second, detail: err.Error()}
	}
	defer unlock()
	var (
		live []ledger.Record
		free = -1
	)
	for n := 0; n < maxSlotIndex; n++ {
		rec, err := p.store.Get(ctx, slotID(hash, n))
		if errors.Is(err, ledger.ErrNotFound) {
			free = n
			break
		}
		if err != nil {
			return "", Credential{}, &Error{Code: CodeUnavailable, Description: "the ledger is unavailable; nothing was minted", RetryAfter: 5 * time.Second, detail: err.Error()}
		}
		if rec.State == ledger.Active || rec.State == ledger.Pending {
			live = append(live, rec)
		}
	}
	for _, rec := range live {
		if rec.State == ledger.Active && rec.SecretSHA256 == "" {
			return p.handOut(ctx, rec, req)
		}
	}
	if len(live) < p.size && free >= 0 {
		return p.create(ctx, slotID(hash, free), req, base, lease)
	}
	// Every slot holds a secret some job may still use: none may be rotated
	// before its TTL, and another bot user is what the pool exists to avoid.
	wait := time.Duration(0)
	for _, rec := range live {
		if d := rec.ExpiresAt.Sub(p.now()); wait == 0 || d < wait {
			wait = d
		}
	}
	return "", Credential{}, &Error{Code: CodeUnavailable,
		Description: fmt.Sprintf("all %d pooled GitLab access tokens for %s with this role and these scopes are held by other jobs; one is renewed at its TTL, try again then", p.size, req.OwnerPath),
		RetryAfter:  max(wait, time.Second), detail: "access-token pool exhausted"}
}

// handOut rotates the idle slot rec to a secret expiring at req.ExpiresAt.
func (p *Pool) handOut(ctx context.Context, rec ledger.Record, req MintRequest) (string, Credential, error) {
	ref := TokenRef{Kind: rec.Kind, Owner: rec.Owner, GitLabID: rec.GitLabID, Name: tokenName(rec.ID)}
	cred, err := p.rot.Rotate(ctx, ref, req.ExpiresAt)
	if err != nil {
		if _, serr := p.afterFailedRotate(ctx, rec, err); serr != nil {
			p.log.Warn("pool slot not renewed; left for the reaper", "ledger_id", rec.ID, "error", serr)
		}
		return "", Credential{}, &Error{Code: CodeUnavailable, Description: "GitLab did not confirm the renewed credential; nothing usable was handed out, try again", RetryAfter: time.Second, detail: err.Error()}
	}
	if err := p.slots.Rotated(ctx, rec.ID, rec.GitLabID, cred.GitLabID, fingerprint.Of(cred.Secret), req.ExpiresAt); err != nil {
		// Not recorded, so never handed out: rotate it away again at once
		// (the ledger then lags by two ids, which the next rotation
		// reconciles by name), or revoke the slot if that fails too.
		next := TokenRef{Kind: rec.Kind, Owner: rec.Owner, GitLabID: cred.GitLabID, Name: tokenName(rec.ID)}
		if _, rerr := p.rot.Rotate(ctx, next, p.idleUntil()); rerr != nil {
			_, _ = revokeFamily(ctx, p.m, next)
		}
		return "", Credential{}, &Error{Code: CodeUnavailable, Description: "the ledger could not record the credential, so it was not handed out; try again", RetryAfter: 5 * time.Second, detail: err.Error()}
	}
	cred.Kind, cred.Owner, cred.OwnerPath, cred.Name = rec.Kind, rec.Owner, req.OwnerPath, tokenName(rec.ID)
	cred.Username = rec.Username
	cred.ExpiresAt = req.ExpiresAt
	return rec.ID, cred, nil
}

// create makes slot id: the pool's only path to a new bot user.
func (p *Pool) create(ctx context.Context, id string, req MintRequest, base ledger.Record, lease time.Duration) (string, Credential, error) {
	now := p.now()
	rec := base
	rec.ID, rec.State, rec.Kind, rec.Owner, rec.OwnerPath, rec.Scopes = id, ledger.Pending, req.Kind, req.Owner, req.OwnerPath, req.Scopes
	rec.CreatedAt, rec.ExpiresAt, rec.NextAttemptAt = now, req.ExpiresAt, earliest(now.Add(lease), req.ExpiresAt)
	if err := p.store.CreateIntent(ctx, rec); err != nil {
		return "", Credential{}, &Error{Code: CodeUnavailable, Description: "the ledger is unavailable; nothing was minted", RetryAfter: 5 * time.Second, detail: err.Error()}
	}
	req.Name = tokenName(id)
	mctx, cancel := context.WithTimeout(ctx, lease/2)
	cred, err := p.m.Mint(mctx, req)
	cancel()
	if err != nil {
		return "", Credential{}, mintErr{rec: rec, err: err}
	}
	if err := p.store.Activate(ctx, id, cred.GitLabID, cred.Username, fingerprint.Of(cred.Secret), req.ExpiresAt); err != nil {
		if rerr := p.m.Revoke(ctx, TokenRef{Kind: cred.Kind, Owner: cred.Owner, GitLabID: cred.GitLabID}); rerr == nil {
			_ = p.store.MarkRevoked(ctx, id, p.now())
		}
		return "", Credential{}, &Error{Code: CodeUnavailable, Description: "the ledger could not record the credential, so it was not handed out; try again", RetryAfter: 5 * time.Second, detail: err.Error()}
	}
	p.obs.Minted(cred.Kind)
	cred.ExpiresAt = req.ExpiresAt
	return id, cred, nil
}

// mintErr carries a failed create back to the service, which settles the
// intent as for any mint (mintFailed).
type mintErr struct {
	rec ledger.Record
	err error
}

func (e mintErr) Error() string { return e.err.Error() }

// afterFailedRotate settles a rotate of rec that returned rerr: GitLab's
// answer may have been lost after the rotation happened, or the token was
// revoked. The family's active member, found by name, tells: one with a new
// id is the slot's successor, whose secret nobody has, so the slot is idle
// there ("adopted"); none means the slot is gone ("gone", the record
// Revoked). When the old id is still the active one, nothing happened and
// rerr is returned.
func (p *Pool) afterFailedRotate(ctx context.Context, rec ledger.Record, rerr error) (Outcome, error) {
	ref, found, err := p.m.FindByName(ctx, rec.Kind, rec.Owner, tokenName(rec.ID))
	switch {
	case err != nil:
		return Outcome{}, fmt.Errorf("%w (and finding the slot by name failed: %v)", rerr, err)
	case !found:
		if err := p.store.MarkRevoked(ctx, rec.ID, p.now()); err != nil {
			return Outcome{}, err
		}
		p.cache.forgetLedgerID(rec.ID)
		return OutcomePoolGone, nil
	case ref.GitLabID != rec.GitLabID:
		if err := p.slots.Rotated(ctx, rec.ID, rec.GitLabID, ref.GitLabID, "", p.idleUntil()); err != nil {
			return Outcome{}, err
		}
		p.cache.forgetLedgerID(rec.ID)
		return OutcomePoolAdopted, nil
	}
	return Outcome{}, rerr
}

// Slot renewal outcomes (Retire) that are not revocation outcomes: nothing
// was done, so nothing is logged or counted.
var (
	slotNotDue  = Outcome{"not_due"}  // handed out again, or renewed, since it was claimed
	slotAlready = Outcome{"inactive"} // the record is no longer Active
)

// Retire ends the secret slot record rec holds by rotating the slot to an
// idle successor: at its TTL (the reaper), when it is idle and due for a
// keep-alive rotation (the reaper), or early (early: a client revoked it).
// It first reads the record again: when it was rotated meanwhile, or (not
// early) its TTL lies ahead, nothing is done. When the rotation fails and
// reconciliation does not settle it, the slot's family is revoked (no
// secret outlives its TTL); only if that fails too is an error returned.
// The outcome is one of OutcomePoolRotated, OutcomePoolAdopted,
// OutcomePoolGone and OutcomePoolRevoked, or an unlisted one when nothing
// was done.
func (p *Pool) Retire(ctx context.Context, rec ledger.Record, early bool) (Outcome, error) {
	unlock, err := p.lock(ctx, hashOf(rec.ID))
	if err != nil {
		return Outcome{}, err
	}
	defer unlock()
	cur, err := p.store.Get(ctx, rec.ID)
	if err != nil {
		return Outcome{}, err
	}
	switch {
	case cur.State != ledger.Active:
		return slotAlready, nil
	case cur.GitLabID != rec.GitLabID || cur.SecretSHA256 != rec.SecretSHA256:
		return slotNotDue, nil
	case !early && cur.ExpiresAt.After(p.now()):
		return slotNotDue, nil
	}
	ref := TokenRef{Kind: cur.Kind, Owner: cur.Owner, GitLabID: cur.GitLabID, Name: tokenName(cur.ID)}
	next, rerr := p.rot.Rotate(ctx, ref, p.idleUntil())
	if rerr == nil {
		err := p.slots.Rotated(ctx, cur.ID, cur.GitLabID, next.GitLabID, "", p.idleUntil())
		p.cache.forgetLedgerID(cur.ID)
		if err != nil {
			// The old secret is dead in GitLab; the ledger catches up at
			// the next rotation (by name).
			p.log.Warn("pool slot rotated but not recorded", "ledger_id", cur.ID, "error", err)
		}
		return OutcomePoolRotated, nil
	}
	outcome, serr := p.afterFailedRotate(ctx, cur, rerr)
	if serr == nil {
		return outcome, nil
	}
	// The secret must die at its TTL: revoke the slot (its bot goes; a new
	// slot replaces it when needed).
	escaped, err := revokeFamily(ctx, p.m, ref)
	if err != nil {
		return Outcome{}, fmt.Errorf("rotate pool slot: %v; revoke it: %w", rerr, err)
	}
	for range escaped {
		p.obs.Revoked(cur.Kind, OutcomeEscaped)
	}
	p.cache.forgetLedgerID(cur.ID)
	p.log.Warn("pool slot could not be rotated at its TTL; revoked instead", "ledger_id", cur.ID, "error", rerr)
	return OutcomePoolRevoked, p.store.MarkRevoked(ctx, cur.ID, p.now())
}

// poolMint serves a mint of the service from the pool. Like a minted
// credential, a pooled one is offered to other jobs under the reuse key.
func (s *Service) poolMint(ctx context.Context, key, reuse string, mreq MintRequest, req Request, tok *idtoken.Token, rule ruleID) (*Issued, error) {
	// With the ID token's exp, a new slot's intent records the job as its
	// first holder; a hand-out of an existing slot records it below.
	base := ledger.Record{Resource: strings.Join(req.Resources, " "), Rule: rule.name,
		Subject: tok.Subject, ProjectID: JobProject(tok.Claims), PipelineID: tok.Claims["pipeline_id"],
		JobID: tok.Claims["job_id"], TokenJTI: tok.ID, TokenExpiresAt: tok.Expiry}
	id, cred, err := s.pool.acquire(ctx, mreq, base, s.cfg.MintLease)
	var me mintErr
	if errors.As(err, &me) {
		return nil, s.mintFailed(ctx, me.rec, me.err)
	}
	if err != nil {
		return nil, err
	}
	if job := tok.Claims["job_id"]; job != "" {
		// The slot stays when its jobs end (its secret rotates at its
		// TTL), so the hold serves the record of who held it and the job
		// watch; a hold that cannot be written does not take the rotated
		// secret back from the job.
		h := ledger.Holder{LedgerID: id, JobID: job, ProjectID: JobProject(tok.Claims),
			PipelineID: tok.Claims["pipeline_id"], TokenExpiresAt: tok.Expiry, HeldSince: s.cfg.Now()}
		if err := s.store.AddHolder(ctx, h); err != nil {
			s.cfg.Logger.Warn("pool slot handed out, but its hold was not recorded", "ledger_id", id, "job_id", job, "error", err)
		}
	}
	if s.cfg.Scheduled != nil {
		s.cfg.Scheduled(cred.ExpiresAt)
	}
	s.cache.put(key, cached{ledgerID: id, cred: cred, scopes: mreq.Scopes, role: mreq.AccessLevel, rule: rule, reuse: reuse}, s.cfg.Now())
	return &Issued{AccessToken: cred.Secret, Username: cred.Username, ExpiresAt: cred.ExpiresAt,
		Scopes: mreq.Scopes, Kind: cred.Kind, AccessLevel: mreq.AccessLevel, LedgerID: id}, nil
}
