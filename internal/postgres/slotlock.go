package postgres

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"

	"github.com/jackc/pgx/v5/pgxpool"

	"gltoken.dev/gltoken/internal/ledger"
)

var _ ledger.SlotLocker = (*Store)(nil)

// slotLockConns bounds the connections that hold pool locks. They come from
// a pool of their own: a holder does its ledger work on the main pool, so
// however many locks are held or awaited, that work always finds a
// connection (one pool for both could be filled by lock holders each
// waiting for a second connection).
const slotLockConns = 8

// LockSlots takes a session-level advisory lock for the pool key on a
// connection of its own, held until unlock; PostgreSQL drops it if the
// connection dies with its replica.
func (s *Store) LockSlots(ctx context.Context, key string) (func(), error) {
	if key == "" {
		return nil, fmt.Errorf("postgres: lock slots: no pool key")
	}
	locks, err := s.slotLocks(ctx)
	if err != nil {
		return nil, fmt.Errorf("postgres: lock slots: %w", err)
	}
	conn, err := locks.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("postgres: lock slots: %w", err)
	}
	id := slotLockID(key)
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock($1)`, id); err != nil {
		// Cancelled while waiting: the connection may be in any state.
		conn.Hijack().Close(context.Background())
		return nil, fmt.Errorf("postgres: lock slots: %w", err)
	}
	return func() {
		if _, err := conn.Exec(context.Background(), `SELECT pg_advisory_unlock($1)`, id); err != nil {
			// Closing the session releases its locks.
			conn.Hijack().Close(context.Background())
			return
		}
		conn.Release()
	}, nil
}

// slotLocks opens the pool of lock connections on first use.
func (s *Store) slotLocks(ctx context.Context) (*pgxpool.Pool, error) {
	s.locksMu.Lock()
	defer s.locksMu.Unlock()
	if s.locks != nil {
		return s.locks, nil
	}
	cfg := s.pool.Config().Copy()
	cfg.MaxConns, cfg.MinConns = slotLockConns, 0
	p, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, err
	}
	s.locks = p
	return p, nil
}

// slotLockID is the advisory lock key of a pool: the first 8 bytes of the
// SHA-256 of "gltoken-slots:" and the key, so it never meets schemaLockKey
// or another application's keys by accident.
func slotLockID(key string) int64 {
	h := sha256.Sum256([]byte("gltoken-slots:" + key))
	return int64(binary.BigEndian.Uint64(h[:8]))
}
