package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"gltoken.dev/gltoken/internal/ledger"
)

var _ ledger.RotationStore = (*Store)(nil)

const rotationColumns = `old_sha256, holder, claimed_at, new_sha256, sealed, done_at`

// ClaimRotation claims a service token rotation (see ledger.RotationStore).
func (s *Store) ClaimRotation(ctx context.Context, oldSHA256, holder string, now, staleBefore time.Time) (ledger.Rotation, bool, error) {
	sha, err := ledger.CheckRotationKey(oldSHA256, holder)
	if err != nil {
		return ledger.Rotation{}, false, fmt.Errorf("sqlite: claim rotation: %w", err)
	}
	if now.IsZero() {
		return ledger.Rotation{}, false, errors.New("sqlite: claim rotation: no claim time")
	}
	r, err := oneRotation(s.writer.QueryRowContext(ctx, `INSERT INTO ledger_rotations (old_sha256, holder, claimed_at, new_sha256)
		VALUES (?, ?, ?, '')
		ON CONFLICT (old_sha256) DO UPDATE SET holder = excluded.holder, claimed_at = excluded.claimed_at
		WHERE ledger_rotations.new_sha256 = '' AND ledger_rotations.holder <> excluded.holder
			AND ? IS NOT NULL AND ledger_rotations.claimed_at < ?
		RETURNING `+rotationColumns, sha, holder, micros(now), nullMicros(staleBefore), nullMicros(staleBefore)))
	switch {
	case err == nil:
		return r, true, nil
	case !errors.Is(err, ledger.ErrNotFound):
		return ledger.Rotation{}, false, fmt.Errorf("sqlite: claim rotation: %w", err)
	}
	r, err = s.GetRotation(ctx, sha)
	if err != nil {
		return ledger.Rotation{}, false, fmt.Errorf("sqlite: claim rotation: %w", err)
	}
	return r, r.Holder == holder && !r.Done(), nil
}

// CompleteRotation publishes a rotation's successor.
func (s *Store) CompleteRotation(ctx context.Context, oldSHA256, holder, newSHA256 string, sealed []byte, at time.Time) error {
	sha, err := ledger.CheckRotationKey(oldSHA256, holder)
	if err != nil {
		return fmt.Errorf("sqlite: complete rotation: %w", err)
	}
	newSHA, err := ledger.CheckRotationResult(sha, newSHA256, sealed, at)
	if err != nil {
		return fmt.Errorf("sqlite: complete rotation: %w", err)
	}
	res, err := s.writer.ExecContext(ctx, `UPDATE ledger_rotations SET new_sha256 = ?, sealed = ?, done_at = ?
		WHERE old_sha256 = ? AND holder = ? AND new_sha256 = ''`, newSHA, sealed, micros(at), sha, holder)
	if err != nil {
		return fmt.Errorf("sqlite: complete rotation: %w", err)
	}
	if n, err := res.RowsAffected(); err == nil && n == 1 {
		return nil
	}
	r, err := s.GetRotation(ctx, sha)
	if err != nil {
		return fmt.Errorf("sqlite: complete rotation: %w", err)
	}
	if r.Done() && r.NewSHA256 == newSHA && r.Holder == holder {
		return nil
	}
	return fmt.Errorf("sqlite: complete rotation: %w", ledger.ErrConflict)
}

// ReleaseRotation drops an unfinished claim of holder's.
func (s *Store) ReleaseRotation(ctx context.Context, oldSHA256, holder string) error {
	sha, err := ledger.CheckRotationKey(oldSHA256, holder)
	if err != nil {
		return fmt.Errorf("sqlite: release rotation: %w", err)
	}
	if _, err := s.writer.ExecContext(ctx, `DELETE FROM ledger_rotations WHERE old_sha256 = ? AND holder = ? AND new_sha256 = ''`, sha, holder); err != nil {
		return fmt.Errorf("sqlite: release rotation: %w", err)
	}
	return nil
}

// GetRotation returns the rotation of oldSHA256.
func (s *Store) GetRotation(ctx context.Context, oldSHA256 string) (ledger.Rotation, error) {
	sha, err := ledger.CheckFingerprint(oldSHA256)
	if err != nil {
		return ledger.Rotation{}, fmt.Errorf("sqlite: get rotation: %w", err)
	}
	r, err := oneRotation(s.reader.QueryRowContext(ctx, `SELECT `+rotationColumns+` FROM ledger_rotations WHERE old_sha256 = ?`, sha))
	if err != nil {
		return ledger.Rotation{}, fmt.Errorf("sqlite: get rotation: %w", err)
	}
	return r, nil
}

func oneRotation(row *sql.Row) (ledger.Rotation, error) {
	var (
		r       ledger.Rotation
		claimed int64
		doneAt  sql.NullInt64
	)
	err := row.Scan(&r.OldSHA256, &r.Holder, &claimed, &r.NewSHA256, &r.Sealed, &doneAt)
	if errors.Is(err, sql.ErrNoRows) {
		return ledger.Rotation{}, ledger.ErrNotFound
	}
	if err != nil {
		return ledger.Rotation{}, err
	}
	r.ClaimedAt = fromMicros(claimed)
	r.DoneAt = fromNullMicros(doneAt)
	return r, nil
}
