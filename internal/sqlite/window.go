package sqlite

import (
	"context"
	"errors"
	"fmt"
	"time"

	"gltoken.dev/gltoken/internal/ledger"
)

// CreatedSince returns at most limit records created at or after since
// whose id sorts after after (keyset pagination: pass the last id of a page
// to get the next), by id: a window of the ledger read in bounded pages
// (exchanged suggest). limit must be positive.
func (s *Store) CreatedSince(ctx context.Context, since time.Time, after string, limit int) ([]ledger.Record, error) {
	if limit <= 0 {
		return nil, errors.New("sqlite: created since: limit must be positive")
	}
	rows, err := s.reader.QueryContext(ctx, `SELECT `+columns+` FROM ledger_records
		WHERE created_at >= ? AND id > ? ORDER BY id LIMIT ?`, micros(since), after, limit)
	if err != nil {
		return nil, fmt.Errorf("sqlite: created since: %w", err)
	}
	recs, err := scanRecords(rows)
	if err != nil {
		return nil, fmt.Errorf("sqlite: created since: %w", err)
	}
	return recs, nil
}
