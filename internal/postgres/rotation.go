package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"gltoken.dev/gltoken/internal/ledger"
)

var _ ledger.RotationStore = (*Store)(nil)

const rotationColumns = `old_sha256, holder, claimed_at, new_sha256, sealed, done_at`

// ClaimRotation claims a service token rotation (see ledger.RotationStore).
// The insert, or the take-over of a stale claim, is one statement, so two
// replicas claiming together cannot both win.
func (s *Store) ClaimRotation(ctx context.Context, oldSHA256, holder string, now, staleBefore time.Time) (ledger.Rotation, bool, error) {
	sha, err := ledger.CheckRotationKey(oldSHA256, holder)
	if err != nil {
		return ledger.Rotation{}, false, fmt.Errorf("postgres: claim rotation: %w", err)
	}
	if now.IsZero() {
		return ledger.Rotation{}, false, errors.New("postgres: claim rotation: no claim time")
	}
	r, err := s.oneRotation(ctx, `INSERT INTO ledger_rotations (old_sha256, holder, claimed_at, new_sha256)
		VALUES ($1, $2, $3, '')
		ON CONFLICT (old_sha256) DO UPDATE SET holder = EXCLUDED.holder, claimed_at = EXCLUDED.claimed_at
		WHERE ledger_rotations.new_sha256 = '' AND ledger_rotations.holder <> EXCLUDED.holder
			AND $4::timestamptz IS NOT NULL AND ledger_rotations.claimed_at < $4
		RETURNING `+rotationColumns, sha, holder, ts(now), nullTS(staleBefore))
	switch {
	case err == nil:
		return r, true, nil
	case !errors.Is(err, ledger.ErrNotFound):
		return ledger.Rotation{}, false, fmt.Errorf("postgres: claim rotation: %w", err)
	}
	r, err = s.GetRotation(ctx, sha)
	if err != nil {
		return ledger.Rotation{}, false, fmt.Errorf("postgres: claim rotation: %w", err)
	}
	return r, r.Holder == holder && !r.Done(), nil
}

// CompleteRotation publishes a rotation's successor.
func (s *Store) CompleteRotation(ctx context.Context, oldSHA256, holder, newSHA256 string, sealed []byte, at time.Time) error {
	sha, err := ledger.CheckRotationKey(oldSHA256, holder)
	if err != nil {
		return fmt.Errorf("postgres: complete rotation: %w", err)
	}
	newSHA, err := ledger.CheckRotationResult(sha, newSHA256, sealed, at)
	if err != nil {
		return fmt.Errorf("postgres: complete rotation: %w", err)
	}
	tag, err := s.pool.Exec(ctx, `UPDATE ledger_rotations SET new_sha256 = $3, sealed = $4, done_at = $5
		WHERE old_sha256 = $1 AND holder = $2 AND new_sha256 = ''`, sha, holder, newSHA, sealed, ts(at))
	if err != nil {
		return fmt.Errorf("postgres: complete rotation: %w", err)
	}
	if tag.RowsAffected() == 1 {
		return nil
	}
	r, err := s.GetRotation(ctx, sha)
	if err != nil {
		return fmt.Errorf("postgres: complete rotation: %w", err)
	}
	if r.Done() && r.NewSHA256 == newSHA && r.Holder == holder {
		return nil
	}
	return fmt.Errorf("postgres: complete rotation: %w", ledger.ErrConflict)
}

// ReleaseRotation drops an unfinished claim of holder's.
func (s *Store) ReleaseRotation(ctx context.Context, oldSHA256, holder string) error {
	sha, err := ledger.CheckRotationKey(oldSHA256, holder)
	if err != nil {
		return fmt.Errorf("postgres: release rotation: %w", err)
	}
	if _, err := s.pool.Exec(ctx, `DELETE FROM ledger_rotations WHERE old_sha256 = $1 AND holder = $2 AND new_sha256 = ''`, sha, holder); err != nil {
		return fmt.Errorf("postgres: release rotation: %w", err)
	}
	return nil
}

// GetRotation returns the rotation of oldSHA256.
func (s *Store) GetRotation(ctx context.Context, oldSHA256 string) (ledger.Rotation, error) {
	sha, err := ledger.CheckFingerprint(oldSHA256)
	if err != nil {
		return ledger.Rotation{}, fmt.Errorf("postgres: get rotation: %w", err)
	}
	r, err := s.oneRotation(ctx, `SELECT `+rotationColumns+` FROM ledger_rotations WHERE old_sha256 = $1`, sha)
	if err != nil {
		return ledger.Rotation{}, fmt.Errorf("postgres: get rotation: %w", err)
	}
	return r, nil
}

func (s *Store) oneRotation(ctx context.Context, query string, args ...any) (ledger.Rotation, error) {
	var (
		r      ledger.Rotation
		doneAt *time.Time
	)
	err := s.pool.QueryRow(ctx, query, args...).Scan(&r.OldSHA256, &r.Holder, &r.ClaimedAt, &r.NewSHA256, &r.Sealed, &doneAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return ledger.Rotation{}, ledger.ErrNotFound
	}
	if err != nil {
		return ledger.Rotation{}, err
	}
	r.ClaimedAt = r.ClaimedAt.UTC()
	if doneAt != nil {
		r.DoneAt = doneAt.UTC()
	}
	return r, nil
}
