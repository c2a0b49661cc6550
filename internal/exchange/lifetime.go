package exchange

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"gltoken.dev/gltoken/internal/ledger"
	"gltoken.dev/gltoken/internal/periodic"
)

// FamilyRevoker is implemented by minters that can end a token's whole
// family: GitLab (16.10+) lets an access token with the api scope rotate
// itself (POST /projects/:id/access_tokens/self/rotate), which revokes it and
// makes a successor with a new id and the same name and bot user, so
// revoking only the id the ledger holds would leave the successor alive.
// RevokeFamily revokes ref (named ref.Name) and every active member of its
// family, and reports how many members other than ref.GitLabID it revoked.
type FamilyRevoker interface {
	RevokeFamily(ctx context.Context, ref TokenRef) (escaped int, err error)
}

// ManagedToken is a token gltoken minted, as GitLab lists it.
type ManagedToken struct {
	GitLabID int64
	Name     string // "gltoken-" + ledger id
}

// ManagedLister lists the active tokens named "gltoken-…" of a kind on an
// owner (for the sweep). The GitLab adapter implements it for access tokens.
type ManagedLister interface {
	ListManaged(ctx context.Context, kind ledger.Kind, owner int64) ([]ManagedToken, error)
}

// ErrRevokeUnconfirmed: GitLab answered 404 to a revoke, and the owner is not
// visible to the service account either (moved, membership removed), so
// nothing shows the token is gone: it may work until its GitLab expiry.
// Errors wrapping it also wrap ErrNotFound.
var ErrRevokeUnconfirmed = errors.New("gitlab: revoke answered 404 but the owner is not visible: the token may still work")

// tokenName is the GitLab name of a record's token.
func tokenName(id string) string { return "gltoken-" + id }

// revokeFamily ends ref and, when the minter can, every member of its family.
func revokeFamily(ctx context.Context, m Minter, ref TokenRef) (int, error) {
	if fr, ok := m.(FamilyRevoker); ok && ref.Name != "" {
		return fr.RevokeFamily(ctx, ref)
	}
	return 0, m.Revoke(ctx, ref)
}

// deadInGitLab is when a record's token stops working in GitLab whatever
// gltoken does: a deploy token's expiry is exact; an access token's is the
// date the adapter sends (internal/gitlab's AccessTokenExpiryDate: the UTC
// date of the TTL plus two days), valid until its start in the server's zone
// (at most 12 hours behind UTC), so a day after that date begins.
func deadInGitLab(rec ledger.Record) time.Time {
	if rec.ExpiresAt.IsZero() {
		return time.Time{}
	}
	if rec.Kind.DeployToken() {
		return rec.ExpiresAt
	}
	u := rec.ExpiresAt.UTC()
	return time.Date(u.Year(), u.Month(), u.Day(), 0, 0, 0, 0, time.UTC).AddDate(0, 0, 3)
}

// Sweeper looks for tokens that escaped the ledger: on every owner the
// daemon minted access tokens on (in the last MaxAge), it lists the active
// "gltoken-…" tokens and revokes each one the ledger does not hold as live
// (an Active record with that GitLab id, or a Pending intent the reaper
// settles). One GitLab listing per owner and pass.
type Sweeper struct {
	store    ledger.Store
	lister   ManagedLister
	minter   Minter
	interval time.Duration
	maxAge   time.Duration
	now      func() time.Time
	log      *slog.Logger
	audit    *slog.Logger
	obs      Observer
}

// SweeperConfig configures NewSweeper.
type SweeperConfig struct {
	Interval time.Duration // default 15m: one listing per owner per interval
	// MaxAge bounds how far back owners are swept (default 400 days: the
	// longest a self-rotated access token can live).
	MaxAge   time.Duration
	Now      func() time.Time
	Logger   *slog.Logger
	Audit    *slog.Logger
	Observer Observer
}

// NewSweeper builds a sweeper; lister is usually the minter itself.
func NewSweeper(cfg SweeperConfig, store ledger.Store, lister ManagedLister, m Minter) *Sweeper {
	s := &Sweeper{store: store, lister: lister, minter: m, interval: cfg.Interval, maxAge: cfg.MaxAge,
		now: cfg.Now, log: cfg.Logger, audit: cfg.Audit, obs: cfg.Observer}
	if s.interval <= 0 {
		s.interval = 15 * time.Minute
	}
	if s.maxAge <= 0 {
		s.maxAge = 400 * 24 * time.Hour
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.audit == nil {
		s.audit = s.log
	}
	if s.obs == nil {
		s.obs = nopObserver{}
	}
	return s
}

// Run sweeps every interval until ctx ends (the first pass after one interval).
func (s *Sweeper) Run(ctx context.Context) {
	periodic.Run(ctx, s.interval, func(ctx context.Context) {
		if n, err := s.SweepOnce(ctx); err != nil && ctx.Err() == nil {
			s.log.Error("escape sweep incomplete", "revoked", n, "error", err)
		}
	})
}

// SweepOnce sweeps every owner once and reports how many escaped tokens it
// revoked. An owner GitLab cannot list is skipped (and named in the error).
func (s *Sweeper) SweepOnce(ctx context.Context) (int, error) {
	owners, err := s.store.Owners(ctx, []ledger.Kind{ledger.ProjectAccessToken, ledger.GroupAccessToken}, s.now().Add(-s.maxAge))
	if err != nil {
		return 0, fmt.Errorf("sweep: list owners: %w", err)
	}
	revoked := 0
	var errs []error
	for _, o := range owners {
		if ctx.Err() != nil {
			return revoked, ctx.Err()
		}
		toks, err := s.lister.ListManaged(ctx, o.Kind, o.Owner)
		if err != nil {
			errs = append(errs, fmt.Errorf("sweep %s %d: %w", o.Kind, o.Owner, err))
			continue
		}
		for _, t := range toks {
			live, rec, err := s.heldLive(ctx, t)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			if live {
				continue
			}
			ref := TokenRef{Kind: o.Kind, Owner: o.Owner, GitLabID: t.GitLabID}
			ev := auditEvent{RequestID: backgroundID(actionSweep), Outcome: OutcomeEscaped, Kind: o.Kind, GitLabID: t.GitLabID}
			if rec.ID != "" {
				ev.fromRecord(rec)
				ev.GitLabID = t.GitLabID
			}
			if err := s.minter.Revoke(ctx, ref); err != nil {
				errs = append(errs, fmt.Errorf("sweep: revoke escaped %s %d on %d: %w", o.Kind, t.GitLabID, o.Owner, err))
				ev.Outcome, ev.Detail = OutcomeEscapedFailed, err.Error()
				s.obs.Revoked(o.Kind, OutcomeEscapedFailed)
				s.audit.LogAttrs(ctx, slog.LevelError, "escaped credential found", ev.attrs()...)
				continue
			}
			revoked++
			s.obs.Revoked(o.Kind, OutcomeEscaped)
			ev.Detail = fmt.Sprintf("token %s (GitLab id %d) was active in GitLab but not live in the ledger", t.Name, t.GitLabID)
			s.audit.LogAttrs(ctx, slog.LevelWarn, "escaped credential revoked", ev.attrs()...)
		}
	}
	return revoked, errors.Join(errs...)
}

// heldLive reports whether the ledger holds t as live: its record is Active
// with t's GitLab id, or still Pending (its mint may just be finishing; the
// reaper settles intents).
func (s *Sweeper) heldLive(ctx context.Context, t ManagedToken) (bool, ledger.Record, error) {
	id := strings.TrimPrefix(t.Name, "gltoken-")
	rec, err := s.store.Get(ctx, id)
	switch {
	case errors.Is(err, ledger.ErrNotFound):
		return false, ledger.Record{}, nil
	case err != nil:
		return true, ledger.Record{}, fmt.Errorf("sweep: ledger record %s: %w", id, err)
	}
	switch rec.State {
	case ledger.Pending:
		return true, rec, nil
	case ledger.Active:
		// A pool slot's record follows its token through rotations; a
		// member under another id is a rotation the ledger has not caught
		// up with yet (pool tokens cannot rotate themselves), which the
		// slot's next rotation reconciles: never revoke the pool's own.
		return rec.GitLabID == t.GitLabID || IsPoolSlot(rec.ID), rec, nil
	}
	return false, rec, nil
}
