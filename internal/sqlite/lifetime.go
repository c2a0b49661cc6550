package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"time"

	"gltoken.dev/gltoken/internal/ledger"
)

// NextDue implements ledger.Store (the due index's first entry). The index
// is named: left to itself, SQLite walks every live record by state.
func (s *Store) NextDue(ctx context.Context) (time.Time, bool, error) {
	var next sql.NullInt64
	err := s.reader.QueryRowContext(ctx, `SELECT min(next_attempt_at) FROM ledger_records INDEXED BY ledger_records_due
		WHERE state IN ('pending', 'active')`).Scan(&next)
	if err != nil {
		return time.Time{}, false, fmt.Errorf("sqlite: next due: %w", err)
	}
	if !next.Valid {
		return time.Time{}, false, nil
	}
	return fromMicros(next.Int64), true, nil
}

// CountOverdue implements ledger.Store.
func (s *Store) CountOverdue(ctx context.Context, before time.Time) (int, error) {
	var n int
	err := s.reader.QueryRowContext(ctx, `SELECT count(*) FROM ledger_records
		WHERE state IN ('pending', 'active') AND expires_at IS NOT NULL AND expires_at < ?`, micros(before)).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("sqlite: count overdue: %w", err)
	}
	return n, nil
}

// Owners implements ledger.Store.
func (s *Store) Owners(ctx context.Context, kinds []ledger.Kind, since time.Time) ([]ledger.OwnerRef, error) {
	if len(kinds) == 0 {
		return nil, nil
	}
	args := []any{micros(since)}
	marks := make([]string, len(kinds))
	for i, k := range kinds {
		marks[i] = "?"
		args = append(args, string(k))
	}
	rows, err := s.reader.QueryContext(ctx, `SELECT DISTINCT kind, owner FROM ledger_records
		WHERE created_at >= ? AND owner > 0 AND kind IN (`+strings.Join(marks, ",")+`)`, args...)
	if err != nil {
		return nil, fmt.Errorf("sqlite: owners: %w", err)
	}
	defer rows.Close()
	var out []ledger.OwnerRef
	for rows.Next() {
		var o ledger.OwnerRef
		var kind string
		if err := rows.Scan(&kind, &o.Owner); err != nil {
			return nil, fmt.Errorf("sqlite: owners: %w", err)
		}
		o.Kind = ledger.Kind(kind)
		out = append(out, o)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlite: owners: %w", err)
	}
	return out, nil
}
