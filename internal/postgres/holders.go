package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"gltoken.dev/gltoken/internal/ledger"
)

// letGo is true for a record (alias r) that has holders, none of whom holds
// it any more.
const letGo = `(EXISTS (SELECT 1 FROM ledger_holders h WHERE h.ledger_id = r.id)
	AND NOT EXISTS (SELECT 1 FROM ledger_holders h WHERE h.ledger_id = r.id AND h.released_at IS NULL))`

// SealSecret keeps the sealed secret of an Active record.
func (s *Store) SealSecret(ctx context.Context, id, keyID string, sealed []byte) error {
	if err := ledger.CheckSeal(keyID, sealed); err != nil {
		return fmt.Errorf("postgres: seal secret of %s: %w", id, err)
	}
	err := s.transition(ctx, id, nil,
		`UPDATE ledger_records SET secret_key_id = $2, sealed_secret = $3 WHERE id = $1 AND state = 'active'`,
		id, keyID, sealed)
	if err != nil {
		return fmt.Errorf("postgres: seal secret of %s: %w", id, err)
	}
	return nil
}

// Reusable returns the live credentials of a grant a job may be handed.
func (s *Store) Reusable(ctx context.Context, key string, liveAfter, notAfter time.Time, limit int) ([]ledger.Record, error) {
	if err := ledger.CheckReusable(key, limit); err != nil {
		return nil, fmt.Errorf("postgres: reusable: %w", err)
	}
	rows, err := s.pool.Query(ctx, `SELECT `+prefixed("r.", columns)+` FROM ledger_records r
		WHERE r.state = 'active' AND r.reuse_key = $1 AND r.reuse_key <> ''
			AND r.expires_at > $2 AND r.expires_at <= $3 AND length(r.sealed_secret) > 0
			AND NOT `+letGo+`
		ORDER BY r.expires_at DESC, r.id LIMIT $4`,
		key, ts(liveAfter), ts(notAfter), limit)
	if err != nil {
		return nil, fmt.Errorf("postgres: reusable: %w", err)
	}
	recs, err := scanRecords(rows)
	if err != nil {
		return nil, fmt.Errorf("postgres: reusable: %w", err)
	}
	return recs, nil
}

// AddHolder records that a job holds a credential. The record's row is
// locked first (as ReleaseJob locks it), so a hold and a release of the
// last holder never interleave.
func (s *Store) AddHolder(ctx context.Context, h ledger.Holder) error {
	if err := ledger.CheckHolder(h); err != nil {
		return fmt.Errorf("postgres: add holder: %w", err)
	}
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var state string
		err := tx.QueryRow(ctx, `SELECT state FROM ledger_records WHERE id = $1 FOR UPDATE`, h.LedgerID).Scan(&state)
		if errors.Is(err, pgx.ErrNoRows) {
			return ledger.ErrNotFound
		}
		if err != nil {
			return err
		}
		// Existence probes, never counts: a shared credential can have
		// thousands of holders, and this runs on every hand-out of it.
		var holders, holding bool
		var mine *bool // nil: the job never held it; else whether it still does
		err = tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM ledger_holders WHERE ledger_id = $1),
				EXISTS (SELECT 1 FROM ledger_holders WHERE ledger_id = $1 AND released_at IS NULL),
				(SELECT released_at IS NULL FROM ledger_holders WHERE ledger_id = $1 AND job_id = $2)`,
			h.LedgerID, h.JobID).Scan(&holders, &holding, &mine)
		if err != nil {
			return err
		}
		mineHolding := mine != nil && *mine
		switch {
		case mineHolding:
			return nil
		case state != string(ledger.Pending) && state != string(ledger.Active):
			return fmt.Errorf("%w (it is %s)", ledger.ErrConflict, state)
		case mine != nil:
			return fmt.Errorf("%w (the job let go of it)", ledger.ErrConflict)
		case holders && !holding && !ledger.IsSlotID(h.LedgerID):
			// A pool slot stays when its jobs end (its secret rotates at
			// its TTL): only other credentials are let go.
			return fmt.Errorf("%w (every job that held it let go)", ledger.ErrConflict)
		}
		_, err = tx.Exec(ctx, `INSERT INTO ledger_holders
			(ledger_id, job_id, project_id, pipeline_id, token_expires_at, held_since) VALUES ($1, $2, $3, $4, $5, $6)`,
			h.LedgerID, h.JobID, h.ProjectID, h.PipelineID, ts(h.TokenExpiresAt), ts(h.HeldSince))
		return err
	})
	if err != nil {
		return fmt.Errorf("postgres: add holder %s of %s: %w", h.JobID, h.LedgerID, err)
	}
	return nil
}

const holderColumns = `ledger_id, job_id, project_id, pipeline_id, token_expires_at, held_since, released_at`

// Holders lists every holder of a credential.
func (s *Store) Holders(ctx context.Context, ledgerID string) ([]ledger.Holder, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+holderColumns+` FROM ledger_holders
		WHERE ledger_id = $1 ORDER BY held_since, job_id`, ledgerID)
	if err != nil {
		return nil, fmt.Errorf("postgres: holders of %s: %w", ledgerID, err)
	}
	hs, err := scanHolders(rows)
	if err != nil {
		return nil, fmt.Errorf("postgres: holders of %s: %w", ledgerID, err)
	}
	return hs, nil
}

// Holds lists a job's holds on live credentials.
func (s *Store) Holds(ctx context.Context, jobID string) ([]ledger.Holder, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+prefixed("h.", holderColumns)+`
		FROM ledger_holders h JOIN ledger_records r ON r.id = h.ledger_id
		WHERE h.job_id = $1 AND h.released_at IS NULL AND r.state IN ('pending', 'active')
		ORDER BY h.held_since, h.ledger_id`, jobID)
	if err != nil {
		return nil, fmt.Errorf("postgres: holds of job %s: %w", jobID, err)
	}
	hs, err := scanHolders(rows)
	if err != nil {
		return nil, fmt.Errorf("postgres: holds of job %s: %w", jobID, err)
	}
	return hs, nil
}

// LiveHolds returns the holds of running jobs on live credentials.
func (s *Store) LiveHolds(ctx context.Context, limit int) ([]ledger.Holder, error) {
	if limit <= 0 {
		return nil, fmt.Errorf("postgres: live holds: limit %d must be positive", limit)
	}
	rows, err := s.pool.Query(ctx, `SELECT `+prefixed("h.", holderColumns)+`
		FROM ledger_holders h JOIN ledger_records r ON r.id = h.ledger_id
		WHERE h.released_at IS NULL AND r.state IN ('pending', 'active')
		ORDER BY h.job_id, h.ledger_id LIMIT $1`, limit)
	if err != nil {
		return nil, fmt.Errorf("postgres: live holds: %w", err)
	}
	hs, err := scanHolders(rows)
	if err != nil {
		return nil, fmt.Errorf("postgres: live holds: %w", err)
	}
	return hs, nil
}

// ReleaseJob lets go of a job's holds and returns the live credentials no
// job holds any more (never a pool slot: it stays, its secret rotates). The
// records are locked in id order (AddHolder locks one), so two releases or a
// release and a hold never deadlock and never both miss the last holder.
func (s *Store) ReleaseJob(ctx context.Context, jobID string, at time.Time) ([]string, error) {
	if at.IsZero() {
		return nil, fmt.Errorf("postgres: release job %s: no release time", jobID)
	}
	var orphaned []string
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		orphaned = nil
		rows, err := tx.Query(ctx, `SELECT id FROM ledger_records
			WHERE id IN (SELECT ledger_id FROM ledger_holders WHERE job_id = $1 AND released_at IS NULL)
			ORDER BY id FOR UPDATE`, jobID)
		if err != nil {
			return err
		}
		ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return err
		}
		if len(ids) == 0 {
			return nil
		}
		if _, err := tx.Exec(ctx, `UPDATE ledger_holders SET released_at = $3
			WHERE job_id = $1 AND ledger_id = ANY($2) AND released_at IS NULL`, jobID, ids, ts(at)); err != nil {
			return err
		}
		rows, err = tx.Query(ctx, `SELECT r.id FROM ledger_records r
			WHERE r.id = ANY($1) AND r.state IN ('pending', 'active') AND `+letGo+`
				AND NOT starts_with(r.id, $2)
			ORDER BY r.id`, ids, ledger.SlotIDPrefix)
		if err != nil {
			return err
		}
		orphaned, err = pgx.CollectRows(rows, pgx.RowTo[string])
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("postgres: release job %s: %w", jobID, err)
	}
	return orphaned, nil
}

func scanHolders(rows pgx.Rows) ([]ledger.Holder, error) {
	defer rows.Close()
	var hs []ledger.Holder
	for rows.Next() {
		var (
			h          ledger.Holder
			exp, since time.Time
			released   *time.Time
		)
		if err := rows.Scan(&h.LedgerID, &h.JobID, &h.ProjectID, &h.PipelineID, &exp, &since, &released); err != nil {
			return nil, err
		}
		h.TokenExpiresAt, h.HeldSince = exp.UTC(), since.UTC()
		if released != nil {
			h.ReleasedAt = released.UTC()
		}
		hs = append(hs, h)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	return hs, nil
}
