package postgres

import (
	"context"
	"fmt"
	"time"

	"gltoken.dev/gltoken/internal/ledger"
)

// Rotated records a rotation of a pool slot's token (ledger.SlotStore).
func (s *Store) Rotated(ctx context.Context, id string, fromGitLabID, toGitLabID int64, secretSHA256 string, expiresAt time.Time) error {
	sha, err := ledger.CheckRotated(id, fromGitLabID, toGitLabID, secretSHA256, expiresAt)
	if err != nil {
		return fmt.Errorf("postgres: rotated %s: %w", id, err)
	}
	err = s.transition(ctx, id, nil,
		`UPDATE ledger_records SET gitlab_id = $2, secret_sha256 = $3, expires_at = $4, next_attempt_at = $4,
			attempts = 0, last_error = '', secret_key_id = '', sealed_secret = NULL
		WHERE id = $1 AND state = 'active' AND gitlab_id = $5`,
		id, toGitLabID, sha, ts(expiresAt), fromGitLabID)
	if err != nil {
		return fmt.Errorf("postgres: rotated %s: %w", id, err)
	}
	return nil
}

var _ ledger.SlotStore = (*Store)(nil)
