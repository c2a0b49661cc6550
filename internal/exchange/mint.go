package exchange

import (
	"context"
	"crypto/rand"
	"encoding/base32"
	"errors"
	"fmt"
	"strings"
	"time"

	"gltoken.dev/gltoken/internal/fingerprint"
	"gltoken.dev/gltoken/internal/idtoken"
	"gltoken.dev/gltoken/internal/ledger"
)

// The mint sequence: resolve the owner, write the intent, ask GitLab, record
// the result. Nothing minted is ever forgotten: the intent is written before
// GitLab is asked, and whatever goes wrong after it is settled here or by the
// reaper.

// mint mints what mreq asks for (its Owner still unresolved: OwnerPath
// names it) and caches it under key, and for other jobs under the reuse key
// if there is one.
func (s *Service) mint(ctx context.Context, key, reuse string, mreq MintRequest, req Request, tok *idtoken.Token, rule ruleID) (*Issued, error) {
	// The mint outlives a client that hangs up: an intent half done is worse
	// than a credential nobody collects (the reaper ends that one on time).
	ctx = context.WithoutCancel(ctx)
	// The policy decided on a path: mint on exactly that project or group,
	// by its id, so a rename later cannot point revocation elsewhere.
	ownerID, err := s.minter.ResolveOwner(ctx, mreq.Kind, mreq.OwnerPath)
	if err != nil {
		return nil, s.gitlabError(mreq.OwnerPath, err)
	}
	mreq.Owner = ownerID
	if s.pool.pools(mreq) {
		return s.poolMint(ctx, key, reuse, mreq, req, tok, rule)
	}
	id, err := newLedgerID()
	if err != nil {
		return nil, internalError(err)
	}
	mreq.Name = "gltoken-" + id
	now := s.cfg.Now()
	rec := ledger.Record{
		ID: id, State: ledger.Pending, Kind: mreq.Kind, Owner: ownerID, OwnerPath: mreq.OwnerPath,
		Scopes: mreq.Scopes, Resource: strings.Join(req.Resources, " "), Rule: rule.name,
		Subject: tok.Subject, ProjectID: JobProject(tok.Claims), PipelineID: tok.Claims["pipeline_id"],
		JobID: tok.Claims["job_id"], TokenJTI: tok.ID,
		// With the ID token's exp, the intent records the job as the
		// credential's first holder: job-end revocation ends it when the
		// job ends (see Reaper.EndJob).
		TokenExpiresAt: tok.Expiry,
		// Another job of the project passing the same rule may be handed it
		// (from the ledger after a restart, with a Sealer).
		ReuseKey: reuse,
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
	if err := s.store.Activate(ctx, id, cred.GitLabID, cred.Username, fingerprint.Of(cred.Secret), expires); err != nil {
		// The intent stays for the reaper if the store is down; if the reaper
		// already gave up on it, end the credential now.
		ref := TokenRef{Kind: cred.Kind, Owner: cred.Owner, GitLabID: cred.GitLabID}
		if rerr := s.minter.Revoke(ctx, ref); rerr == nil {
			_ = s.store.MarkRevoked(ctx, id, s.cfg.Now())
		}
		return nil, &Error{Code: CodeUnavailable, Description: "the ledger could not record the credential, so it was not handed out; try again", RetryAfter: 5 * time.Second, detail: err.Error()}
	}
	s.cfg.Observer.Minted(cred.Kind)
	if s.cfg.Scheduled != nil {
		s.cfg.Scheduled(expires)
	}
	if s.jobEndedDuringMint(ctx, rec) {
		// Job-end revocation found the intent still pending and left it; the
		// reaper ends the credential now.
		_ = s.store.RetryLater(ctx, id, s.cfg.Now(), "its job ended while it was minted")
		if s.cfg.Scheduled != nil {
			s.cfg.Scheduled(s.cfg.Now())
		}
		return nil, &Error{Code: CodeInvalidGrant, Description: fmt.Sprintf("job %s ended while its credential was minted; the credential is revoked", rec.JobID)}
	}
	cred.ExpiresAt = expires
	if reuse != "" {
		s.sealSecret(ctx, id, cred.Secret)
	}
	role := 0
	if cred.Kind.AccessToken() {
		role = mreq.AccessLevel
	}
	s.cache.put(key, cached{ledgerID: id, cred: cred, scopes: mreq.Scopes, role: role, reuse: reuse, rule: rule}, s.cfg.Now())
	return &Issued{AccessToken: cred.Secret, Username: cred.Username, ExpiresAt: expires,
		Scopes: mreq.Scopes, Kind: cred.Kind, AccessLevel: role, LedgerID: id}, nil
}

// mintFailed settles an intent whose mint did not return a credential.
func (s *Service) mintFailed(ctx context.Context, rec ledger.Record, err error) error {
	if errors.Is(err, ErrAmbiguous) {
		// The create may have happened: find it by name. We cannot hand it out
		// (GitLab shows a secret only once), so end it and ask the client to
		// retry. If it is not there (yet: GitLab may still be working on the
		// request), the intent stays pending and the reaper looks again.
		ref, found, ferr := s.minter.FindByName(ctx, rec.Kind, rec.Owner, tokenName(rec.ID))
		switch {
		case ferr != nil:
			s.cfg.Logger.Warn("ambiguous mint left for the reaper", "ledger_id", rec.ID, "error", ferr)
		case found:
			ref.Name = tokenName(rec.ID)
			if _, rerr := revokeFamily(ctx, s.minter, ref); rerr == nil {
				_ = s.store.MarkRevoked(ctx, rec.ID, s.cfg.Now())
				s.cfg.Observer.Revoked(rec.Kind, OutcomeAmbiguousMint)
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
		return &Error{Code: CodeRateLimited, Description: "GitLab is rate limiting the service account; try again later", RetryAfter: max(ra.After, time.Second), detail: err.Error(), reason: limitReason(err)}
	case errors.Is(err, ErrRateLimited):
		return &Error{Code: CodeRateLimited, Description: "GitLab is rate limiting the service account; try again later", RetryAfter: 10 * time.Second, detail: err.Error(), reason: limitReason(err)}
	case errors.Is(err, ErrNotFound):
		return &Error{Code: CodeInvalidTarget, Description: fmt.Sprintf("%s was not found in GitLab under that exact path (it may have moved or been renamed, or the service account cannot see it)", owner), detail: err.Error()}
	case errors.Is(err, ErrServiceTokenInvalid):
		return &Error{Code: CodeServerError, Description: "GitLab rejected the daemon's GitLab token (401): the daemon's GitLab token is invalid, expired or revoked; ask the daemon's operator (exchanged check --online says which)", detail: err.Error()}
	case errors.Is(err, ErrForbidden):
		return &Error{Code: CodeServerError, Description: fmt.Sprintf("GitLab refused to mint on %s: the daemon's service account lacks the rights (Maintainer on a project, Owner on a group); ask the daemon's operator", owner), detail: err.Error()}
	case errors.Is(err, ErrUnavailable):
		return &Error{Code: CodeUnavailable, Description: "GitLab cannot be reached; try again later", RetryAfter: 5 * time.Second, detail: err.Error()}
	case errors.Is(err, ErrRejected):
		return &Error{Code: CodeServerError, Description: "GitLab rejected the token request: " + err.Error(), detail: err.Error()}
	}
	return internalError(err)
}

// limitReason is LimitGitLabBudget when the daemon's own GitLab API budget
// refused the call (ErrBudgetSpent), LimitGitLab when GitLab answered 429.
func limitReason(err error) string {
	if errors.Is(err, ErrBudgetSpent) {
		return LimitGitLabBudget
	}
	return LimitGitLab
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

// jobEndedDuringMint reports whether every job holding the new credential
// let go of it while GitLab minted it (a job event arrived meanwhile).
func (s *Service) jobEndedDuringMint(ctx context.Context, rec ledger.Record) bool {
	if rec.JobID == "" || rec.TokenExpiresAt.IsZero() {
		return false
	}
	hs, err := s.store.Holders(ctx, rec.ID)
	if err != nil || len(hs) == 0 {
		return false
	}
	for _, h := range hs {
		if h.Holding() {
			return false
		}
	}
	return true
}
