// Package exchange is the decision core of exchanged: it turns a verified GitLab
// CI/CD ID token and a requested resource into a short-lived GitLab credential.
// Service.Exchange verifies the token, asks the trust policy, picks the
// least-privileged kind of credential, writes the ledger intent, mints through
// the Minter, and records the result; Service.Revoke and the Reaper end
// credentials. It knows GitLab, the store and HTTP only through interfaces.
package exchange

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base32"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"

	"gltoken.dev/gltoken/internal/idtoken"
	"gltoken.dev/gltoken/internal/ledger"
	"gltoken.dev/gltoken/internal/policy"
)

// Verifier checks a presented ID token; *idtoken.Verifier implements it.
type Verifier interface {
	Verify(ctx context.Context, raw string) (*idtoken.Token, error)
}

// Observer receives the service's measurements; the metrics adapter implements it.
type Observer interface {
	Exchanged(outcome string, kind ledger.Kind, d time.Duration)
	Minted(kind ledger.Kind)
	Revoked(kind ledger.Kind, outcome string)
}

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
	Audit       *slog.Logger // one event per exchange and per revocation
	Observer    Observer
}

// DefaultMintLease bounds one mint: the GitLab call gets half of it, and an
// intent still pending after it is settled by the reaper (a token of its name
// revoked, or the intent abandoned when there is none).
const DefaultMintLease = 2 * time.Minute

// Service is the exchange. Construct it with New.
type Service struct {
	cfg      Config
	gitlab   *url.URL
	registry *url.URL
	verifier Verifier
	policy   func() *policy.Policy
	minter   Minter
	store    ledger.Store

	flight singleflight.Group
	mu     sync.Mutex
	cache  map[string]cached // key: cacheKey
	bySHA  map[string]string // secret fingerprint -> cache key
}

type cached struct {
	ledgerID string
	cred     Credential
	scopes   []string
}

// New builds the service. policy returns the policy in force (it may change
// on reload); it must never return nil.
func New(cfg Config, v Verifier, pol func() *policy.Policy, m Minter, store ledger.Store) (*Service, error) {
	gl, err := parseBaseURL(cfg.GitLabURL)
	if err != nil {
		return nil, fmt.Errorf("gitlab url: %w", err)
	}
	s := &Service{cfg: cfg, gitlab: gl, verifier: v, policy: pol, minter: m, store: store,
		cache: map[string]cached{}, bySHA: map[string]string{}}
	if cfg.RegistryURL != "" {
		if s.registry, err = parseBaseURL(cfg.RegistryURL); err != nil {
			return nil, fmt.Errorf("registry url: %w", err)
		}
	}
	if s.cfg.MaxTTL <= 0 {
		s.cfg.MaxTTL = 12 * time.Hour
	}
	if s.cfg.MinLifetime <= 0 {
		s.cfg.MinLifetime = 10 * time.Second
	}
	if s.cfg.MintLease <= 0 {
		s.cfg.MintLease = DefaultMintLease
	}
	if s.cfg.CacheMargin <= 0 {
		s.cfg.CacheMargin = 2 * time.Minute
	}
	if s.cfg.Now == nil {
		s.cfg.Now = time.Now
	}
	if s.cfg.Logger == nil {
		s.cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if s.cfg.Audit == nil {
		s.cfg.Audit = s.cfg.Logger
	}
	if s.cfg.Observer == nil {
		s.cfg.Observer = nopObserver{}
	}
	return s, nil
}

func parseBaseURL(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, err
	}
	if (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return nil, fmt.Errorf("%q is not an absolute http(s) URL", raw)
	}
	return u, nil
}

// Request is one RFC 8693 exchange as the HTTP layer parsed it.
type Request struct {
	RequestID    string
	SubjectToken string
	Resource     string
	Scopes       []string
	Peer         string // who asked: "uid=1000 pid=42" on a Unix socket, the address on TCP
}

// Issued is the credential handed to the client.
type Issued struct {
	AccessToken string
	Username    string
	ExpiresAt   time.Time
	Scopes      []string
	Kind        ledger.Kind
	LedgerID    string
	Cached      bool
}

// Exchange validates req and returns a credential, from the cache or newly
// minted. Errors are *Error values carrying the RFC 6749 code.
func (s *Service) Exchange(ctx context.Context, req Request) (*Issued, error) {
	start := s.cfg.Now()
	ev := auditEvent{RequestID: req.RequestID, Resource: redactResource(req.Resource), Scopes: req.Scopes, Peer: req.Peer}
	iss, err := s.exchange(ctx, req, &ev)
	ev.Duration = s.cfg.Now().Sub(start)
	outcome := "granted"
	if err != nil {
		var e *Error
		if !errors.As(err, &e) {
			e = internalError(err)
			err = e
		}
		outcome = e.Code
		ev.Reason = e.Description
		ev.Detail = e.detail
	} else {
		ev.Kind, ev.LedgerID, ev.Username, ev.ExpiresAt, ev.Cached = iss.Kind, iss.LedgerID, iss.Username, iss.ExpiresAt, iss.Cached
		ev.SecretSHA256 = Fingerprint(iss.AccessToken)
	}
	ev.Outcome = outcome
	s.cfg.Observer.Exchanged(outcome, ev.Kind, ev.Duration)
	s.cfg.Audit.LogAttrs(ctx, levelFor(err), "exchange", ev.attrs()...)
	return iss, err
}

func (s *Service) exchange(ctx context.Context, req Request, ev *auditEvent) (*Issued, error) {
	target, err := s.parseResource(req.Resource)
	if err != nil {
		return nil, err
	}
	ev.Target = target.project
	scopes, err := checkScopes(req.Scopes, target.registry)
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

	dec := s.policy().Evaluate(policy.Request{Claims: tok.Claims, Project: target.project, Scopes: scopes})
	ev.Rule = dec.Rule
	if !dec.Allowed {
		code := CodeInvalidTarget
		if dec.ScopeDenied {
			code = CodeInvalidScope
		}
		return nil, &Error{Code: code, Description: "denied by policy: " + dec.Reason}
	}

	now := s.cfg.Now()
	life := min(dec.TTL, s.cfg.MaxTTL, tok.Expiry.Sub(now))
	if life < s.cfg.MinLifetime {
		return nil, &Error{Code: CodeInvalidGrant, Description: fmt.Sprintf("the credential would live only %s (the ID token expires in %s); at least %s is needed", life.Truncate(time.Second), tok.Expiry.Sub(now).Truncate(time.Second), s.cfg.MinLifetime)}
	}

	kind, owner := leastPrivilege(scopes, target.project, dec.Group)
	mreq := MintRequest{Kind: kind, Owner: owner, Scopes: scopes, ExpiresAt: now.Add(life).Truncate(time.Second), AccessLevel: dec.AccessLevel}
	if (kind == ledger.ProjectAccessToken || kind == ledger.GroupAccessToken) && mreq.AccessLevel == 0 {
		mreq.AccessLevel = 30 // developer; GitLab's own default would be maintainer
	}
	key := cacheKey(tok, kind, owner, scopes)
	if iss, ok := s.fromCache(ctx, key); ok {
		return iss, nil
	}
	v, err, _ := s.flight.Do(key, func() (any, error) {
		if iss, ok := s.fromCache(ctx, key); ok {
			return iss, nil
		}
		return s.mint(ctx, key, mreq, req, tok, dec.Rule)
	})
	if err != nil {
		return nil, err
	}
	iss := *v.(*Issued)
	return &iss, nil
}

// leastPrivilege applies DESIGN.md's table: deploy tokens for everything they
// can do, a group deploy token when the rule serves the project through a
// group, a project access token only for push or API access.
func leastPrivilege(scopes []string, project, group string) (ledger.Kind, string) {
	for _, sc := range scopes {
		if !deployTokenScopes[sc] {
			return ledger.ProjectAccessToken, project
		}
	}
	if group != "" {
		return ledger.GroupDeployToken, group
	}
	return ledger.ProjectDeployToken, project
}

var deployTokenScopes = map[string]bool{
	"read_repository": true, "read_registry": true, "write_registry": true,
	"read_package_registry": true, "write_package_registry": true,
	"read_virtual_registry": true, "write_virtual_registry": true,
}

var registryScopes = map[string]bool{"read_registry": true, "write_registry": true}

func checkScopes(requested []string, registry bool) ([]string, error) {
	if len(requested) == 0 {
		return nil, &Error{Code: CodeInvalidScope, Description: "no scope requested"}
	}
	out := make([]string, 0, len(requested))
	for _, sc := range requested {
		if !slices.Contains(policy.KnownScopes, sc) {
			return nil, &Error{Code: CodeInvalidScope, Description: fmt.Sprintf("unknown scope %q", truncate(sc, 64))}
		}
		if registry && !registryScopes[sc] {
			return nil, &Error{Code: CodeInvalidScope, Description: fmt.Sprintf("scope %q does not apply to a registry resource (read_registry, write_registry)", sc)}
		}
		if !slices.Contains(out, sc) {
			out = append(out, sc)
		}
	}
	slices.Sort(out)
	return out, nil
}

func (s *Service) mint(ctx context.Context, key string, mreq MintRequest, req Request, tok *idtoken.Token, rule string) (*Issued, error) {
	// The mint outlives a client that hangs up: an intent half done is worse
	// than a credential nobody collects (the reaper ends that one on time).
	ctx = context.WithoutCancel(ctx)
	// The policy decided on a path: mint on exactly that project or group,
	// by its id, so a rename later cannot point revocation elsewhere.
	ownerPath := mreq.Owner
	ownerID, err := s.minter.ResolveOwner(ctx, mreq.Kind, ownerPath)
	if err != nil {
		return nil, s.gitlabError(ownerPath, err)
	}
	mreq.Owner = ownerID
	id, err := newLedgerID()
	if err != nil {
		return nil, internalError(err)
	}
	mreq.Name = "gltoken-" + id
	now := s.cfg.Now()
	rec := ledger.Record{
		ID: id, State: ledger.Pending, Kind: mreq.Kind, Owner: ownerID, OwnerPath: ownerPath,
		Scopes: mreq.Scopes, Resource: req.Resource, Rule: rule,
		Subject: tok.Subject, ProjectID: tok.Claims["project_id"], PipelineID: tok.Claims["pipeline_id"],
		JobID: tok.Claims["job_id"], TokenJTI: tok.ID,
		// The reaper looks at an unfinished intent when its lease ends, or at
		// the credential's TTL if that comes first.
		CreatedAt: now, ExpiresAt: mreq.ExpiresAt, NextAttemptAt: earliest(now.Add(s.cfg.MintLease), mreq.ExpiresAt),
	}
	if err := s.store.CreateIntent(ctx, rec); err != nil {
		return nil, &Error{Code: CodeUnavailable, Description: "the ledger is unavailable; nothing was minted", RetryAfter: 5 * time.Second, detail: err.Error()}
	}

	mctx, cancel := context.WithTimeout(ctx, s.cfg.MintLease/2)
	cred, err := s.minter.Mint(mctx, mreq)
	cancel()
	if err != nil {
		return nil, s.mintFailed(ctx, rec, err)
	}
	// The ledger revokes at the lifetime the policy allowed, whatever date
	// GitLab keeps as its own backstop.
	expires := mreq.ExpiresAt
	if !cred.ExpiresAt.IsZero() && cred.ExpiresAt.Before(expires) {
		expires = cred.ExpiresAt
	}
	if err := s.store.Activate(ctx, id, cred.GitLabID, cred.Username, Fingerprint(cred.Secret), expires); err != nil {
		// The intent stays for the reaper if the store is down; if the reaper
		// already gave up on it, end the credential now.
		ref := TokenRef{Kind: cred.Kind, Owner: cred.Owner, GitLabID: cred.GitLabID}
		if rerr := s.minter.Revoke(ctx, ref); rerr == nil {
			_ = s.store.MarkRevoked(ctx, id, s.cfg.Now())
		}
		return nil, &Error{Code: CodeUnavailable, Description: "the ledger could not record the credential, so it was not handed out; try again", RetryAfter: 5 * time.Second, detail: err.Error()}
	}
	s.cfg.Observer.Minted(cred.Kind)
	iss := &Issued{AccessToken: cred.Secret, Username: cred.Username, ExpiresAt: expires,
		Scopes: mreq.Scopes, Kind: cred.Kind, LedgerID: id}
	s.remember(key, cached{ledgerID: id, cred: Credential{
		Kind: cred.Kind, Owner: cred.Owner, OwnerPath: cred.OwnerPath, GitLabID: cred.GitLabID, Name: cred.Name,
		Username: cred.Username, Secret: cred.Secret, ExpiresAt: iss.ExpiresAt}, scopes: mreq.Scopes})
	return iss, nil
}

// mintFailed settles an intent whose mint did not return a credential.
func (s *Service) mintFailed(ctx context.Context, rec ledger.Record, err error) error {
	if errors.Is(err, ErrAmbiguous) {
		// The create may have happened: find it by name. We cannot hand it out
		// (GitLab shows a secret only once), so end it and ask the client to
		// retry. If it is not there (yet: GitLab may still be working on the
		// request), the intent stays pending and the reaper looks again.
		ref, found, ferr := s.minter.FindByName(ctx, rec.Kind, rec.Owner, "gltoken-"+rec.ID)
		switch {
		case ferr != nil:
			s.cfg.Logger.Warn("ambiguous mint left for the reaper", "ledger_id", rec.ID, "error", ferr)
		case found:
			if rerr := s.minter.Revoke(ctx, ref); rerr == nil {
				_ = s.store.MarkRevoked(ctx, rec.ID, s.cfg.Now())
				s.cfg.Observer.Revoked(rec.Kind, "ambiguous_mint")
			}
		}
		return &Error{Code: CodeUnavailable, Description: "GitLab did not confirm the new credential; nothing usable was minted, try again", RetryAfter: time.Second, detail: err.Error()}
	}
	_ = s.store.Abandon(ctx, rec.ID, err.Error())
	return s.gitlabError(rec.OwnerPath, err)
}

// gitlabError maps what the minter returned to the API's errors.
func (s *Service) gitlabError(owner string, err error) error {
	var ra *RetryAfterError
	switch {
	case errors.As(err, &ra):
		return &Error{Code: CodeRateLimited, Description: "GitLab is rate limiting the service account; try again later", RetryAfter: max(ra.After, time.Second), detail: err.Error()}
	case errors.Is(err, ErrRateLimited):
		return &Error{Code: CodeRateLimited, Description: "GitLab is rate limiting the service account; try again later", RetryAfter: 10 * time.Second, detail: err.Error()}
	case errors.Is(err, ErrNotFound):
		return &Error{Code: CodeInvalidTarget, Description: fmt.Sprintf("%s was not found in GitLab under that exact path (it may have moved or been renamed, or the service account cannot see it)", owner), detail: err.Error()}
	case errors.Is(err, ErrForbidden):
		return &Error{Code: CodeServerError, Description: fmt.Sprintf("GitLab refused to mint on %s: the daemon's service account lacks the rights (Maintainer on a project, Owner on a group); ask the daemon's operator", owner), detail: err.Error()}
	case errors.Is(err, ErrUnavailable):
		return &Error{Code: CodeUnavailable, Description: "GitLab cannot be reached; try again later", RetryAfter: 5 * time.Second, detail: err.Error()}
	case errors.Is(err, ErrRejected):
		return &Error{Code: CodeServerError, Description: "GitLab rejected the token request: " + err.Error(), detail: err.Error()}
	}
	return internalError(err)
}

// fromCache returns the credential cached for key while it has more than
// CacheMargin to live and, on a shared store, the ledger still holds it
// Active: another replica may have revoked it (RFC 7009, or its reaper).
// When the ledger cannot be read, the cached credential is served: GitLab
// still accepts it.
func (s *Service) fromCache(ctx context.Context, key string) (*Issued, bool) {
	s.mu.Lock()
	c, ok := s.cache[key]
	if ok && c.cred.ExpiresAt.Sub(s.cfg.Now()) <= s.cfg.CacheMargin {
		s.forgetLocked(key)
		ok = false
	}
	s.mu.Unlock()
	if !ok {
		return nil, false
	}
	if s.cfg.SharedStore {
		if rec, err := s.store.Get(ctx, c.ledgerID); err == nil && rec.State != ledger.Active {
			s.forgetLedgerID(c.ledgerID)
			return nil, false
		}
	}
	return &Issued{AccessToken: c.cred.Secret, Username: c.cred.Username, ExpiresAt: c.cred.ExpiresAt,
		Scopes: c.scopes, Kind: c.cred.Kind, LedgerID: c.ledgerID, Cached: true}, true
}

func (s *Service) remember(key string, c cached) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.cfg.Now()
	for k, old := range s.cache { // the cache is small: one entry per live credential
		if !old.cred.ExpiresAt.After(now) {
			s.forgetLocked(k)
		}
	}
	s.cache[key] = c
	s.bySHA[Fingerprint(c.cred.Secret)] = key
}

func (s *Service) forgetSecret(sha string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if key, ok := s.bySHA[sha]; ok {
		s.forgetLocked(key)
	}
}

func (s *Service) forgetLedgerID(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, c := range s.cache {
		if c.ledgerID == id {
			s.forgetLocked(k)
		}
	}
}

func (s *Service) forgetLocked(key string) {
	if c, ok := s.cache[key]; ok {
		delete(s.bySHA, Fingerprint(c.cred.Secret))
		delete(s.cache, key)
	}
}

// cacheKey identifies "the same request": the same job's ID token asking for
// the same kind of credential on the same owner with the same scopes.
func cacheKey(tok *idtoken.Token, kind ledger.Kind, owner string, scopes []string) string {
	job := tok.ID
	if job == "" {
		job = tok.Subject + "|" + tok.IssuedAt.String()
	}
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00%s\x00%s\x00%s\x00%s", tok.Issuer, job, kind, owner, strings.Join(scopes, " "))
	return hex.EncodeToString(h.Sum(nil))
}

// Revoke ends the credential whose secret is token (RFC 7009). Unknown
// tokens are not an error.
func (s *Service) Revoke(ctx context.Context, requestID, token, peer string) error {
	start := s.cfg.Now()
	sha := Fingerprint(token)
	s.forgetSecret(sha)
	ev := auditEvent{RequestID: requestID, SecretSHA256: sha, Peer: peer, Outcome: "unknown_token"}
	defer func() {
		ev.Duration = s.cfg.Now().Sub(start)
		s.cfg.Audit.LogAttrs(ctx, slog.LevelInfo, "revocation", ev.attrs()...)
	}()
	rec, err := s.store.FindBySecret(ctx, sha)
	if errors.Is(err, ledger.ErrNotFound) {
		return nil
	}
	if err != nil {
		ev.Outcome, ev.Detail = "error", err.Error()
		return &Error{Code: CodeUnavailable, Description: "the ledger is unavailable; try again", RetryAfter: 5 * time.Second, detail: err.Error()}
	}
	ev.fromRecord(rec)
	if rec.State != ledger.Active {
		ev.Outcome = "already_" + string(rec.State)
		return nil
	}
	err = s.minter.Revoke(ctx, TokenRef{Kind: rec.Kind, Owner: rec.Owner, GitLabID: rec.GitLabID})
	if err != nil {
		// The reaper retries it at once.
		_ = s.store.RetryLater(ctx, rec.ID, s.cfg.Now(), err.Error())
		ev.Outcome, ev.Detail = "deferred", err.Error()
		s.cfg.Observer.Revoked(rec.Kind, "deferred")
		return nil
	}
	if err := s.store.MarkRevoked(ctx, rec.ID, s.cfg.Now()); err != nil {
		ev.Detail = err.Error()
	}
	ev.Outcome = "revoked"
	s.cfg.Observer.Revoked(rec.Kind, "client")
	return nil
}

// Fingerprint is the hex SHA-256 of a secret: the only form in which a secret
// may appear in logs, audit events and the ledger.
func Fingerprint(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:])
}

var ledgerIDEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// newLedgerID returns 80 random bits, lower-case base32 (16 characters).
func newLedgerID() (string, error) {
	var b [10]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return ledgerIDEncoding.EncodeToString(b[:]), nil
}

func earliest(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

type nopObserver struct{}

func (nopObserver) Exchanged(string, ledger.Kind, time.Duration) {}
func (nopObserver) Minted(ledger.Kind)                           {}
func (nopObserver) Revoked(ledger.Kind, string)                  {}
