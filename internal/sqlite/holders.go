package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"gltoken.dev/gltoken/internal/ledger"
)

// letGo is true for a record (alias r) that has holders, none of whom holds
// it any more.
const letGo = `(EXISTS (SELECT 1 FROM ledger_holders h WHERE h.ledger_id = r.id)
	AND NOT EXISTS (SELECT 1 FROM ledger_holders h WHERE h.ledger_id = r.id AND h.released_at IS NULL))`

// SealSecret keeps the sealed secret of an Active record.
func (s *Store) SealSecret(ctx context.Context, id, keyID string, sealed []byte) error {
	if err := ledger.CheckSeal(keyID, sealed); err != nil {
		return fmt.Errorf("sqlite: seal secret of %s: %w", id, err)
	}
	err := s.transition(ctx, id, nil,
		`UPDATE ledger_records SET secret_key_id = ?, sealed_secret = ? WHERE id = ? AND state = 'active'`,
		keyID, sealed, id)
	if err != nil {
		return fmt.Errorf("sqlite: seal secret of %s: %w", id, err)
	}
	return nil
}

// Reusable returns the live credentials of a grant a job may be handed.
func (s *Store) Reusable(ctx context.Context, key string, liveAfter, notAfter time.Time, limit int) ([]ledger.Record, error) {
	if err := ledger.CheckReusable(key, limit); err != nil {
		return nil, fmt.Errorf("sqlite: reusable: %w", err)
	}
	rows, err := s.reader.QueryContext(ctx, `SELECT `+columns+` FROM ledger_records r INDEXED BY ledger_records_reuse
		WHERE r.state = 'active' AND r.reuse_key = ? AND r.reuse_key <> ''
			AND r.expires_at > ? AND r.expires_at <= ? AND length(r.sealed_secret) > 0
			AND NOT `+letGo+`
		ORDER BY r.expires_at DESC, r.id LIMIT ?`,
		key, micros(liveAfter), micros(notAfter), limit)
	if err != nil {
		return nil, fmt.Errorf("sqlite: reusable: %w", err)
	}
	recs, err := scanRecords(rows)
	if err != nil {
		return nil, fmt.Errorf("sqlite: reusable: %w", err)
	}
	return recs, nil
}

// AddHolder records that a job holds a credential.
func (s *Store) AddHolder(ctx context.Context, h ledger.Holder) error {
	if err := ledger.CheckHolder(h); err != nil {
		return fmt.Errorf("sqlite: add holder: %w", err)
	}
	err := s.addHolder(ctx, h)
	if err != nil {
		return fmt.Errorf("sqlite: add holder %s of %s: %w", h.JobID, h.LedgerID, err)
	}
	return nil
}

func (s *Store) addHolder(ctx context.Context, h ledger.Holder) error {
	tx, err := s.writer.BeginTx(ctx, nil) // BEGIN IMMEDIATE: the checks and the insert are one step
	if err != nil {
		return err
	}
	defer tx.Rollback()
	// Index probes, never counts (see statements.holderCheck).
	var (
		state   string
		holders bool
		holding bool
		mine    sql.NullBool // NULL: the job never held it; else whether it still does
	)
	err = tx.StmtContext(ctx, s.stmts.holderCheck).QueryRowContext(ctx, h.JobID, h.LedgerID).
		Scan(&state, &holders, &holding, &mine)
	if errors.Is(err, sql.ErrNoRows) {
		return ledger.ErrNotFound
	}
	if err != nil {
		return err
	}
	mineHolding := mine.Valid && mine.Bool
	switch {
	case mineHolding:
		return nil
	case state != string(ledger.Pending) && state != string(ledger.Active):
		return fmt.Errorf("%w (it is %s)", ledger.ErrConflict, state)
	case mine.Valid:
		return fmt.Errorf("%w (the job let go of it)", ledger.ErrConflict)
	case holders && !holding && !ledger.IsSlotID(h.LedgerID):
		// A pool slot stays when its jobs end (its secret rotates at its
		// TTL): only other credentials are let go.
		return fmt.Errorf("%w (every job that held it let go)", ledger.ErrConflict)
	}
	if _, err := tx.StmtContext(ctx, s.stmts.holderInsert).ExecContext(ctx,
		h.LedgerID, h.JobID, h.ProjectID, h.PipelineID, micros(h.TokenExpiresAt), micros(h.HeldSince)); err != nil {
		return err
	}
	return tx.Commit()
}

const holderColumns = `ledger_id, job_id, project_id, pipeline_id, token_expires_at, held_since, released_at`

// Holders lists every holder of a credential.
func (s *Store) Holders(ctx context.Context, ledgerID string) ([]ledger.Holder, error) {
	rows, err := s.reader.QueryContext(ctx, `SELECT `+holderColumns+` FROM ledger_holders
		WHERE ledger_id = ? ORDER BY held_since, job_id`, ledgerID)
	if err != nil {
		return nil, fmt.Errorf("sqlite: holders of %s: %w", ledgerID, err)
	}
	hs, err := scanHolders(rows)
	if err != nil {
		return nil, fmt.Errorf("sqlite: holders of %s: %w", ledgerID, err)
	}
	return hs, nil
}

// Holds lists a job's holds on live credentials.
func (s *Store) Holds(ctx context.Context, jobID string) ([]ledger.Holder, error) {
	rows, err := s.reader.QueryContext(ctx, `SELECT `+prefixed("h.", holderColumns)+`
		FROM ledger_holders h JOIN ledger_records r ON r.id = h.ledger_id
		WHERE h.job_id = ? AND h.released_at IS NULL AND r.state IN ('pending', 'active')
		ORDER BY h.held_since, h.ledger_id`, jobID)
	if err != nil {
		return nil, fmt.Errorf("sqlite: holds of job %s: %w", jobID, err)
	}
	hs, err := scanHolders(rows)
	if err != nil {
		return nil, fmt.Errorf("sqlite: holds of job %s: %w", jobID, err)
	}
	return hs, nil
}

// LiveHolds returns the holds of running jobs on live credentials.
func (s *Store) LiveHolds(ctx context.Context, limit int) ([]ledger.Holder, error) {
	if limit <= 0 {
		return nil, fmt.Errorf("sqlite: live holds: limit %d must be positive", limit)
	}
	rows, err := s.reader.QueryContext(ctx, `SELECT `+prefixed("h.", holderColumns)+`
		FROM ledger_holders h JOIN ledger_records r ON r.id = h.ledger_id
		WHERE h.released_at IS NULL AND r.state IN ('pending', 'active')
		ORDER BY h.job_id, h.ledger_id LIMIT ?`, limit)
	if err != nil {
		return nil, fmt.Errorf("sqlite: live holds: %w", err)
	}
	hs, err := scanHolders(rows)
	if err != nil {
		return nil, fmt.Errorf("sqlite: live holds: %w", err)
	}
	return hs, nil
}

// ReleaseJob lets go of a job's holds and returns the live credentials no
// job holds any more (never a pool slot: it stays, its secret rotates).
func (s *Store) ReleaseJob(ctx context.Context, jobID string, at time.Time) ([]string, error) {
	if at.IsZero() {
		return nil, fmt.Errorf("sqlite: release job %s: no release time", jobID)
	}
	ids, err := s.releaseJob(ctx, jobID, at)
	if err != nil {
		return nil, fmt.Errorf("sqlite: release job %s: %w", jobID, err)
	}
	return ids, nil
}

func (s *Store) releaseJob(ctx context.Context, jobID string, at time.Time) ([]string, error) {
	tx, err := s.writer.BeginTx(ctx, nil)
	if err != nil {
		return nil, err
	}
	defer tx.Rollback()
	rows, err := tx.QueryContext(ctx, `UPDATE ledger_holders SET released_at = ?
		WHERE job_id = ? AND released_at IS NULL RETURNING ledger_id`, micros(at), jobID)
	if err != nil {
		return nil, err
	}
	var released []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return nil, err
		}
		released = append(released, id)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	var orphaned []string
	if len(released) > 0 {
		// The records just let go, as one JSON array parameter.
		list, err := encodeScopes(released)
		if err != nil {
			return nil, err
		}
		rows, err := tx.QueryContext(ctx, `SELECT r.id FROM ledger_records r
			WHERE r.id IN (SELECT value FROM json_each(?)) AND r.state IN ('pending', 'active') AND `+letGo+`
				AND substr(r.id, 1, ?) <> ?
			ORDER BY r.id`, list, len(ledger.SlotIDPrefix), ledger.SlotIDPrefix)
		if err != nil {
			return nil, err
		}
		for rows.Next() {
			var id string
			if err := rows.Scan(&id); err != nil {
				rows.Close()
				return nil, err
			}
			orphaned = append(orphaned, id)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, err
		}
	}
	if err := tx.Commit(); err != nil {
		return nil, err
	}
	return orphaned, nil
}

func scanHolders(rows *sql.Rows) ([]ledger.Holder, error) {
	defer rows.Close()
	var hs []ledger.Holder
	for rows.Next() {
		var (
			h          ledger.Holder
			exp, since int64
			released   sql.NullInt64
		)
		if err := rows.Scan(&h.LedgerID, &h.JobID, &h.ProjectID, &h.PipelineID, &exp, &since, &released); err != nil {
			return nil, err
		}
		h.TokenExpiresAt, h.HeldSince, h.ReleasedAt = fromMicros(exp), fromMicros(since), fromNullMicros(released)
		hs = append(hs, h)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	return hs, nil
}

func prefixed(prefix, cols string) string {
	parts := strings.Split(cols, ",")
	for i, p := range parts {
		parts[i] = prefix + strings.TrimSpace(p)
	}
	return strings.Join(parts, ", ")
}
