// Package exchange is the decision core of exchanged: it turns a verified GitLab
// CI/CD ID token and a requested resource into a short-lived GitLab credential.
// Service.Exchange verifies the token, asks the trust policy, picks the
// least-privileged kind of credential, writes the ledger intent, mints through
// the Minter, and records the result; Service.Revoke and the Reaper end
// credentials. It knows GitLab, the store and HTTP only through interfaces.
package exchange

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"golang.org/x/sync/singleflight"

	"gltoken.dev/gltoken/internal/fingerprint"
	"gltoken.dev/gltoken/internal/idtoken"
	"gltoken.dev/gltoken/internal/ledger"
	"gltoken.dev/gltoken/internal/policy"
)

// Config is the part of the daemon's configuration the service needs.
type Config struct {
	// GitLabURL is the instance the daemon serves: resources on its host are
	// repositories.
	GitLabURL string
	// RegistryURL is optional: resources on its host are registry repositories.
	RegistryURL string
	// MaxTTL caps every credential's lifetime.
	MaxTTL time.Duration
	// MinLifetime is the shortest credential worth minting; a request whose
	// lifetime would be shorter is refused (default 10s).
	MinLifetime time.Duration
	// MintLease is how long an intent may stay pending before a reaper may
	// give up on it (default DefaultMintLease). The GitLab call gets half of it.
	MintLease time.Duration
	// CacheMargin: a cached credential is handed out again only while it has
	// more than this left (default 2m).
	CacheMargin time.Duration
	// SharedStore: other daemons use the same ledger (PostgreSQL replicas),
	// so a cached credential may have been revoked elsewhere and the ledger
	// is read on every cache hit. With a store of its own, this process sees
	// every revocation itself.
	SharedStore bool
	Now         func() time.Time
	Logger      *slog.Logger // operational log
	// Sealer, when set (store.key_file), seals the secret of every
	// credential minted under a reuse key into the ledger, so that after a
	// restart, or on another replica, a job of the project is handed it
	// instead of a new mint. Nil: secrets stay in memory only.
	Sealer   Sealer
	Audit    *slog.Logger // one event per exchange and per revocation
	Observer Observer
	// Scheduled, when set, is told each new credential's revocation time
	// (the daemon passes Reaper.Schedule), so it is revoked at its TTL.
	Scheduled func(at time.Time)
	// Limiter bounds mints per job, per source project and after client
	// revocations; nil: no limit.
	Limiter MintLimiter
	// Jobs tells whether a job is still running, for rules with
	// require_running_job (JobWatch implements it); nil: such rules refuse
	// every request, since nothing can tell.
	Jobs JobRunning
	// PoolSlots is how many GitLab access tokens (bot users) the pool keeps
	// per kind, owner, role and scopes (default DefaultPoolSlots); negative
	// turns the pool off (a new access token per mint). The pool also needs
	// a store that implements ledger.SlotStore and a minter that implements
	// Rotator.
	PoolSlots int
	// PoolIdle is how long an idle pool slot waits for its keep-alive
	// rotation (default DefaultPoolIdle).
	PoolIdle time.Duration
}

// JobRunning tells whether a CI job is still running; *JobWatch implements it.
type JobRunning interface {
	Running(ctx context.Context, projectID, jobID string) (running bool, status string, err error)
}

// DefaultMintLease bounds one mint: the GitLab call gets half of it, and an
// intent still pending after it is settled by the reaper (a token of its name
// revoked, or the intent abandoned when there is none).
const DefaultMintLease = 2 * time.Minute

// Service is the exchange. Construct it with New.
type Service struct {
	cfg      Config
	origins  origins
	verifier Verifier
	policy   func() *policy.Policy
	minter   Minter
	store    ledger.Store
	cache    *Cache
	pool     *Pool // nil: no access-token pool

	flight singleflight.Group
}

// New builds the service. policy returns the policy in force (it may change
// on reload); it must never return nil.
func New(cfg Config, v Verifier, pol func() *policy.Policy, m Minter, store ledger.Store) (*Service, error) {
	o, err := newOrigins(cfg.GitLabURL, cfg.RegistryURL)
	if err != nil {
		return nil, err
	}
	s := &Service{cfg: cfg.withDefaults(), origins: o, verifier: v, policy: pol, minter: m, store: store, cache: NewCache()}
	s.pool = newPool(s.cfg, store, m, s.cache)
	return s, nil
}

// Pool is the service's access-token pool, for the reaper (nil when off).
func (s *Service) Pool() *Pool { return s.pool }

// withDefaults fills in what cfg leaves unset.
func (cfg Config) withDefaults() Config {
	if cfg.MaxTTL <= 0 {
		cfg.MaxTTL = 12 * time.Hour
	}
	if cfg.MinLifetime <= 0 {
		cfg.MinLifetime = 10 * time.Second
	}
	if cfg.MintLease <= 0 {
		cfg.MintLease = DefaultMintLease
	}
	if cfg.CacheMargin <= 0 {
		cfg.CacheMargin = 2 * time.Minute
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Audit == nil {
		cfg.Audit = cfg.Logger
	}
	if cfg.Observer == nil {
		cfg.Observer = nopObserver{}
	}
	return cfg
}

// Cache is the service's credential cache, for the reaper to drop what it revokes.
func (s *Service) Cache() *Cache { return s.cache }

// Request is one RFC 8693 exchange as the HTTP layer parsed it.
type Request struct {
	RequestID    string
	SubjectToken string
	// Resources are the repository URLs the credential is for: one, or
	// (registry logins) several, for one credential valid at every one.
	Resources []string
	Scopes    []string
	Peer      string // who asked: "uid=1000 pid=42" on a Unix socket, the address on TCP
}

// Issued is the credential handed to the client.
type Issued struct {
	AccessToken string
	Username    string
	ExpiresAt   time.Time
	Scopes      []string
	Kind        ledger.Kind
	// AccessLevel is an access token's role (GitLab access level, e.g. 30
	// developer); 0 for deploy tokens, which have none.
	AccessLevel int
	LedgerID    string
	Cached      bool
	// Reused: the credential was obtained for another job of the same
	// project under the same rule, and is now held by this one too.
	Reused bool
}

// Exchange validates req and returns a credential, from the cache or newly
// minted. Errors are *Error values carrying the RFC 6749 code.
func (s *Service) Exchange(ctx context.Context, req Request) (*Issued, error) {
	start := s.cfg.Now()
	ev := auditEvent{RequestID: req.RequestID, Resource: redactResources(req.Resources), Scopes: req.Scopes, Peer: req.Peer}
	granted, err := s.exchange(ctx, req, &ev)
	ev.Duration = s.cfg.Now().Sub(start)
	outcome := OutcomeGranted
	if err != nil {
		var e *Error
		if !errors.As(err, &e) {
			e = internalError(err)
			err = e
		}
		outcome = outcomeOf(e)
		ev.Reason = e.Description
		ev.Detail = e.detail
	} else {
		ev.Kind, ev.LedgerID, ev.Username, ev.ExpiresAt, ev.Cached, ev.Reused = granted.Kind, granted.LedgerID, granted.Username, granted.ExpiresAt, granted.Cached, granted.Reused
		ev.SecretSHA256 = fingerprint.Of(granted.AccessToken)
	}
	ev.Outcome = outcome
	s.cfg.Observer.Exchanged(outcome, ev.Kind, ev.Duration)
	s.cfg.Audit.LogAttrs(ctx, levelFor(err), "exchange", ev.attrs()...)
	return granted, err
}

func (s *Service) exchange(ctx context.Context, req Request, ev *auditEvent) (*Issued, error) {
	targets, err := s.origins.parseAll(req.Resources)
	if err != nil {
		return nil, err
	}
	ev.Target = projects(targets)
	scopes, err := checkScopes(req.Scopes, targets[0].registry)
	if err != nil {
		return nil, err
	}
	ev.Scopes = scopes

	tok, err := s.verifier.Verify(ctx, req.SubjectToken)
	if err != nil {
		if errors.Is(err, idtoken.ErrKeysUnavailable) {
			return nil, &Error{Code: CodeUnavailable, Description: "GitLab's signing keys cannot be loaded; try again later", RetryAfter: 5 * time.Second, detail: err.Error()}
		}
		return nil, &Error{Code: CodeInvalidGrant, Description: "the ID token was refused: " + err.Error(), detail: err.Error()}
	}
	ev.fromToken(tok)

	p, dec, err := decideAll(s.policy(), s.cfg.MaxTTL, tok.Claims, targets, scopes)
	ev.Rule, ev.Shadow = dec.Rule, shadowVerdicts(dec.Shadow)
	if err != nil {
		return nil, err
	}
	if dec.RequireRunningJob {
		if err := s.checkRunning(ctx, tok, dec.Rule); err != nil {
			return nil, err
		}
	}
	now := s.cfg.Now()
	life := min(p.lifetime, tok.Expiry.Sub(now))
	if life < s.cfg.MinLifetime {
		return nil, &Error{Code: CodeInvalidGrant, Description: fmt.Sprintf("the credential would live only %s (the ID token expires in %s); at least %s is needed", life.Truncate(time.Second), tok.Expiry.Sub(now).Truncate(time.Second), s.cfg.MinLifetime)}
	}

	key := cacheKey(tok, p, dec.RuleFingerprint)
	reuse := reuseKey(tok, p, dec)
	expires := now.Add(life).Truncate(time.Second)
	if reuse != "" {
		// A shared credential ends on a whole minute, so that every job
		// whose ID token expires in the same minute (tokens of jobs started
		// together, when the rule's ttl is the token's lifetime) can hold it.
		if m := now.Add(life).Truncate(time.Minute); m.Sub(now) >= s.cfg.MinLifetime {
			expires = m
		}
	}
	mreq := MintRequest{Kind: p.kind, OwnerPath: p.owner, Scopes: p.scopes, ExpiresAt: expires, AccessLevel: p.role}
	if granted, ok := s.fromCache(ctx, key); ok {
		return granted, nil
	}
	if reuse != "" {
		if granted, ok := s.fromShared(ctx, reuse, key, tok); ok {
			return granted, nil
		}
	}
	// Jobs that may share a credential wait for one mint; a job that cannot
	// take the result (its ID token expires before the credential does) mints
	// its own, in the flight of its own key.
	flight := key
	if reuse != "" {
		flight = "reuse\x00" + reuse
	}
	for {
		v, err, _ := s.flight.Do(flight, func() (any, error) {
			if granted, ok := s.fromCache(ctx, key); ok {
				return minted{key, granted}, nil
			}
			if reuse != "" {
				if granted, ok := s.fromShared(ctx, reuse, key, tok); ok {
					return minted{key, granted}, nil
				}
			}
			if reuse != "" && s.fromLedger(ctx, reuse, mreq, tok, ruleID{p.rule, p.ruleFP}) {
				if granted, ok := s.fromShared(ctx, reuse, key, tok); ok {
					return minted{key, granted}, nil
				}
			}
			if err := s.admitMint(tok, p.owner); err != nil {
				return nil, err
			}
			granted, err := s.mint(ctx, key, reuse, mreq, req, tok, ruleID{p.rule, p.ruleFP})
			return minted{key, granted}, err
		})
		if err != nil {
			return nil, err
		}
		m := v.(minted)
		if m.key == key {
			granted := *m.granted
			return &granted, nil
		}
		// Another job's mint: take a share of it as any later job would.
		if granted, ok := s.fromShared(ctx, reuse, key, tok); ok {
			return granted, nil
		}
		flight = key
	}
}

// minted is a flight's result: the credential and the cache key of the job
// it was obtained for.
type minted struct {
	key     string
	granted *Issued
}

// fromShared hands the job of key a live credential another job of its
// project obtained under the same rule (reuse key), if one lives past the
// cache margin but not past the job's ID token, and records the job as its
// holder. The credential then also answers the job's own key.
func (s *Service) fromShared(ctx context.Context, reuse, key string, tok *idtoken.Token) (*Issued, bool) {
	now := s.cfg.Now()
	c, ok := s.cache.getShared(reuse, now.Add(s.cfg.CacheMargin), tok.Expiry)
	if !ok {
		return nil, false
	}
	if s.cfg.SharedStore && IsPoolSlot(c.ledgerID) {
		// Another replica may have rotated the slot since (a client's
		// revocation, the reaper): its record stays Active, and only its
		// secret tells.
		if rec, err := s.store.Get(ctx, c.ledgerID); err != nil || rec.State != ledger.Active || rec.SecretSHA256 != fingerprint.Of(c.cred.Secret) {
			if err == nil {
				s.cache.forgetLedgerID(c.ledgerID)
			}
			return nil, false
		}
	}
	h := ledger.Holder{LedgerID: c.ledgerID, JobID: tok.Claims["job_id"], ProjectID: JobProject(tok.Claims),
		PipelineID: tok.Claims["pipeline_id"], TokenExpiresAt: tok.Expiry, HeldSince: now}
	if err := s.store.AddHolder(ctx, h); err != nil {
		if errors.Is(err, ledger.ErrConflict) || errors.Is(err, ledger.ErrNotFound) {
			// Revoked, or every holder let go (its last job ended; never a
			// pool slot, whose secret ends at its TTL): never hand it out
			// again.
			s.cache.forgetLedgerID(c.ledgerID)
		}
		// A ledger that cannot be written means no hold can be recorded,
		// so the credential is not shared either.
		return nil, false
	}
	s.cache.hold(key, c.ledgerID, now)
	granted := c.issued()
	granted.Reused = true
	return granted, true
}

// fromCache returns the credential cached for key while it has more than
// CacheMargin to live and, on a shared store, the ledger still holds it
// Active: another replica may have revoked it (RFC 7009, or its reaper).
// When the ledger cannot be read, the cached credential is served: GitLab
// still accepts it.
func (s *Service) fromCache(ctx context.Context, key string) (*Issued, bool) {
	c, ok := s.cache.get(key, s.cfg.Now().Add(s.cfg.CacheMargin))
	if !ok {
		return nil, false
	}
	if s.cfg.SharedStore {
		if rec, err := s.store.Get(ctx, c.ledgerID); err == nil && (rec.State != ledger.Active ||
			(IsPoolSlot(rec.ID) && rec.SecretSHA256 != fingerprint.Of(c.cred.Secret))) { // a pool slot rotated since
			s.cache.forgetLedgerID(c.ledgerID)
			return nil, false
		}
	}
	return c.issued(), true
}

// Revoke ends the credential whose secret is token (RFC 7009). Unknown
// tokens are not an error.
func (s *Service) Revoke(ctx context.Context, requestID, token, peer string) error {
	start := s.cfg.Now()
	sha := fingerprint.Of(token)
	s.cache.forgetSecret(sha)
	ev := auditEvent{RequestID: requestID, SecretSHA256: sha, Peer: peer, Outcome: OutcomeUnknownToken}
	defer func() {
		ev.Duration = s.cfg.Now().Sub(start)
		s.cfg.Audit.LogAttrs(ctx, slog.LevelInfo, "revocation", ev.attrs()...)
	}()
	rec, err := s.store.FindBySecret(ctx, sha)
	if errors.Is(err, ledger.ErrNotFound) {
		return nil
	}
	if err != nil {
		ev.Outcome, ev.Detail = OutcomeUnavailable, err.Error()
		return &Error{Code: CodeUnavailable, Description: "the ledger is unavailable; try again", RetryAfter: 5 * time.Second, detail: err.Error()}
	}
	ev.fromRecord(rec)
	if rec.State != ledger.Active {
		ev.Outcome = alreadyOutcome(rec.State)
		return nil
	}
	if s.pool != nil && IsPoolSlot(rec.ID) {
		// A pool slot is rotated, not revoked: the secret dies, the bot stays.
		if outcome, err := s.pool.Retire(ctx, rec, true); err == nil {
			ev.Outcome = OutcomeClientRevoked
			ev.Detail = "pool slot: " + outcome.String()
			s.cfg.Observer.Revoked(rec.Kind, OutcomeClientRevoked)
			if s.cfg.Limiter != nil {
				s.cfg.Limiter.ClientRevoked(jobKey(rec.JobID, rec.TokenJTI), rec.OwnerPath)
			}
			return nil
		}
	}
	escaped, err := revokeFamily(ctx, s.minter, TokenRef{Kind: rec.Kind, Owner: rec.Owner, GitLabID: rec.GitLabID, Name: tokenName(rec.ID)})
	for range escaped {
		s.cfg.Observer.Revoked(rec.Kind, OutcomeEscaped)
	}
	if escaped > 0 {
		eev := auditEvent{RequestID: requestID, Outcome: OutcomeEscaped, Peer: peer,
			Detail: fmt.Sprintf("%d token(s) of the credential's family (self-rotated successors) revoked with it", escaped)}
		eev.fromRecord(rec)
		s.cfg.Audit.LogAttrs(ctx, slog.LevelWarn, "escaped credential revoked", eev.attrs()...)
	}
	if err != nil {
		// The reaper retries it at once.
		_ = s.store.RetryLater(ctx, rec.ID, s.cfg.Now(), err.Error())
		ev.Outcome, ev.Detail = OutcomeDeferred, err.Error()
		s.cfg.Observer.Revoked(rec.Kind, OutcomeDeferred)
		return nil
	}
	if err := s.store.MarkRevoked(ctx, rec.ID, s.cfg.Now()); err != nil {
		ev.Detail = err.Error()
	}
	ev.Outcome = OutcomeClientRevoked
	s.cfg.Observer.Revoked(rec.Kind, OutcomeClientRevoked)
	if s.cfg.Limiter != nil {
		s.cfg.Limiter.ClientRevoked(jobKey(rec.JobID, rec.TokenJTI), rec.OwnerPath)
	}
	return nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// checkRunning refuses the ID token of a job that is no longer running (a
// token copied out of a finished job's log), for a rule with
// require_running_job. When it cannot be told, the request is refused too.
func (s *Service) checkRunning(ctx context.Context, tok *idtoken.Token, rule string) error {
	job, project := tok.Claims["job_id"], JobProject(tok.Claims)
	if job == "" || project == "" {
		return &Error{Code: CodeInvalidGrant, Description: fmt.Sprintf("rule %q requires a running job, and the ID token names no job (job_id) or project", rule)}
	}
	if s.cfg.Jobs == nil {
		return &Error{Code: CodeServerError, Description: fmt.Sprintf("rule %q requires a running job, and this daemon does not track jobs", rule)}
	}
	running, status, err := s.cfg.Jobs.Running(ctx, project, job)
	switch {
	case errors.Is(err, ErrForbidden), errors.Is(err, ErrNotFound):
		return &Error{Code: CodeServerError, Description: fmt.Sprintf("rule %q requires a running job, and the daemon's service account cannot read the jobs of project %s (it needs the Reporter role or higher there); ask the daemon's operator", rule, project), detail: err.Error()}
	case errors.Is(err, ErrRateLimited), errors.Is(err, ErrUnavailable):
		return &Error{Code: CodeUnavailable, Description: fmt.Sprintf("rule %q requires a running job, and GitLab could not say whether job %s is running; try again", rule, job), RetryAfter: 5 * time.Second, detail: err.Error()}
	case err != nil:
		return &Error{Code: CodeServerError, Description: fmt.Sprintf("rule %q requires a running job, and the daemon could not tell whether job %s is running", rule, job), detail: err.Error()}
	case !running:
		return &Error{Code: CodeInvalidGrant, Description: fmt.Sprintf("the ID token's job %s is no longer running (GitLab says %s), and rule %q requires a running job", job, status, rule)}
	}
	return nil
}

// JobProject is the id of the project the job runs in: job_project_id
// (which differs from project_id in a merge request pipeline from a fork,
// where project_id names the fork), else project_id.
func JobProject(claims map[string]string) string {
	if p := claims["job_project_id"]; p != "" {
		return p
	}
	return claims["project_id"]
}
