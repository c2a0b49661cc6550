package sqlite

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
		return fmt.Errorf("sqlite: rotated %s: %w", id, err)
	}
	err = s.transition(ctx, id, nil,
		`UPDATE ledger_records SET gitlab_id = ?, secret_sha256 = ?, expires_at = ?, next_attempt_at = ?,
			attempts = 0, last_error = '', secret_key_id = '', sealed_secret = NULL
		WHERE id = ? AND state = 'active' AND gitlab_id = ?`,
		toGitLabID, sha, micros(expiresAt), micros(expiresAt), id, fromGitLabID)
	if err != nil {
		return fmt.Errorf("sqlite: rotated %s: %w", id, err)
	}
	return nil
}

var _ ledger.SlotStore = (*Store)(nil)
