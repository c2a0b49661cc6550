// Package postgres is the central ledger store: a ledger.Store on PostgreSQL
// that several daemon replicas share. Open it with Open; it uses
// github.com/jackc/pgx/v5 (pgxpool).
//
// Replicas cooperate through the database alone: the schema is created or
// migrated under a transaction-scoped advisory lock, so replicas starting
// together do not race; ClaimDue locks the rows it takes with FOR UPDATE SKIP
// LOCKED, so two reapers never take the same record within a lease; and each
// state transition is one conditional UPDATE. LockSlots holds a session
// advisory lock per access-token pool, so one replica at a time decides
// about a pool's slots.
package postgres

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"gltoken.dev/gltoken/internal/ledger"
)

// schemaLockKey is the pg_advisory_xact_lock key that serialises schema
// migrations ("gltoken" in ASCII, then 0x01).
const schemaLockKey int64 = 0x676c746f6b656e01

// Store is a ledger.Store on PostgreSQL.
type Store struct {
	pool *pgxpool.Pool

	locksMu sync.Mutex
	locks   *pgxpool.Pool // connections holding pool-slot locks (LockSlots), opened on first use

	closeOnce sync.Once
}

var _ ledger.Store = (*Store)(nil)

// Open connects to the PostgreSQL database at dsn (a postgres:// URL or a
// key=value connection string, as libpq takes them; pool settings such as
// pool_max_conns are honoured) and brings the ledger's schema up to date.
// The tables live in the first schema of the connection's search_path.
func Open(ctx context.Context, dsn string) (*Store, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		// The parser's message may quote the DSN, password and all.
		return nil, errors.New("postgres: cannot parse the DSN (details withheld: it may hold a password)")
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	s := &Store{pool: pool}
	if err := s.migrate(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("postgres: %w", err)
	}
	return s, nil
}

// migrations[i] brings the schema from version i to i+1.
var migrations = []string{
	`CREATE TABLE ledger_records (
		id              text PRIMARY KEY,
		state           text NOT NULL CHECK (state IN ('pending', 'active', 'revoked', 'abandoned')),
		kind            text NOT NULL,
		owner           text NOT NULL,
		owner_path      text NOT NULL,
		scopes          text[] NOT NULL,
		resource        text NOT NULL,
		rule            text NOT NULL,
		subject         text NOT NULL,
		project_id      text NOT NULL,
		pipeline_id     text NOT NULL,
		job_id          text NOT NULL,
		token_jti       text NOT NULL,
		gitlab_id       bigint NOT NULL,
		username        text NOT NULL,
		secret_sha256   text NOT NULL, -- hex SHA-256 of the secret, '' until active
		created_at      timestamptz NOT NULL,
		expires_at      timestamptz,   -- NULL is the zero time
		next_attempt_at timestamptz NOT NULL,
		attempts        integer NOT NULL,
		last_error      text NOT NULL,
		revoked_at      timestamptz
	);
	-- ClaimDue walks this index in order and stops at its limit.
	CREATE INDEX ledger_records_due ON ledger_records (next_attempt_at, id) WHERE state IN ('pending', 'active');
	CREATE INDEX ledger_records_state ON ledger_records (state, created_at);
	CREATE INDEX ledger_records_secret ON ledger_records (secret_sha256) WHERE secret_sha256 <> '';
	CREATE INDEX ledger_records_created ON ledger_records (created_at);`,

	// 2: holders (which jobs hold each credential), reuse and sealed secrets.
	`ALTER TABLE ledger_records ADD COLUMN token_expires_at timestamptz;
	ALTER TABLE ledger_records ADD COLUMN reuse_key text NOT NULL DEFAULT '';
	ALTER TABLE ledger_records ADD COLUMN secret_key_id text NOT NULL DEFAULT '';
	ALTER TABLE ledger_records ADD COLUMN sealed_secret bytea;
	CREATE INDEX ledger_records_reuse ON ledger_records (reuse_key, expires_at) WHERE state = 'active' AND reuse_key <> '';
	CREATE TABLE ledger_holders (
		ledger_id        text NOT NULL REFERENCES ledger_records (id),
		job_id           text NOT NULL,
		project_id       text NOT NULL,
		pipeline_id      text NOT NULL,
		token_expires_at timestamptz NOT NULL,
		held_since       timestamptz NOT NULL,
		released_at      timestamptz, -- NULL while the job holds it
		PRIMARY KEY (ledger_id, job_id)
	);
	CREATE INDEX ledger_holders_job ON ledger_holders (job_id, held_since, ledger_id);`,

	// 3: owner becomes the GitLab id. A record written before owners were
	// ids keeps its path in owner_path, with owner 0.
	`UPDATE ledger_records SET owner_path = owner WHERE owner_path = '' AND owner !~ '^[0-9]{1,18}$';
	ALTER TABLE ledger_records ALTER COLUMN owner TYPE bigint
		USING (CASE WHEN owner ~ '^[0-9]{1,18}$' THEN owner::bigint ELSE 0 END);`,
	// 4: service token self-rotation: one row per rotated token, claimed by one
	// replica, its successor sealed under a key only the old token's holders have.
	`CREATE TABLE ledger_rotations (
		old_sha256 text PRIMARY KEY,
		holder     text NOT NULL,
		claimed_at timestamptz NOT NULL,
		new_sha256 text NOT NULL, -- '' until completed
		sealed     bytea,
		done_at    timestamptz
	);`,
	// 5: "does any job still hold it" (AddHolder, Reusable, ReleaseJob) is one
	// index probe however many jobs once held the credential and let go.
	`CREATE INDEX ledger_holders_holding ON ledger_holders (ledger_id) WHERE released_at IS NULL;`,
}

// migrate creates or upgrades the schema. Replicas starting together queue
// on the advisory lock; the lock ends with the transaction.
func (s *Store) migrate(ctx context.Context) error {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("begin migration: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, schemaLockKey); err != nil {
		return fmt.Errorf("take the schema lock: %w", err)
	}
	if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS ledger_schema (version integer NOT NULL)`); err != nil {
		return fmt.Errorf("create schema version table: %w", err)
	}
	var version int
	if err := tx.QueryRow(ctx, `SELECT coalesce(max(version), 0) FROM ledger_schema`).Scan(&version); err != nil {
		return fmt.Errorf("read schema version: %w", err)
	}
	if version > len(migrations) {
		return fmt.Errorf("schema version %d is newer than this program knows (%d): refusing to touch it", version, len(migrations))
	}
	if version == len(migrations) {
		return tx.Commit(ctx)
	}
	for v := version; v < len(migrations); v++ {
		if _, err := tx.Exec(ctx, migrations[v]); err != nil {
			return fmt.Errorf("migrate schema to version %d: %w", v+1, err)
		}
	}
	if _, err := tx.Exec(ctx, `DELETE FROM ledger_schema`); err != nil {
		return fmt.Errorf("set schema version: %w", err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO ledger_schema (version) VALUES ($1)`, len(migrations)); err != nil {
		return fmt.Errorf("set schema version: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("commit migration: %w", err)
	}
	return nil
}

// Close closes the connection pool. It is safe to call more than once.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.locksMu.Lock()
		if s.locks != nil {
			s.locks.Close()
		}
		s.locksMu.Unlock()
		s.pool.Close()
	})
	return nil
}

// Ping checks the database answers and the ledger table is there.
func (s *Store) Ping(ctx context.Context) error {
	var n int
	if err := s.pool.QueryRow(ctx, `SELECT count(*) FROM ledger_records WHERE false`).Scan(&n); err != nil {
		return fmt.Errorf("postgres: ping: %w", err)
	}
	return nil
}

const columns = `id, state, kind, owner, owner_path, scopes, resource, rule, subject,
	project_id, pipeline_id, job_id, token_jti, gitlab_id, username, secret_sha256,
	created_at, expires_at, next_attempt_at, attempts, last_error, revoked_at,
	token_expires_at, reuse_key, secret_key_id, sealed_secret`

// CreateIntent inserts a Pending record.
func (s *Store) CreateIntent(ctx context.Context, r ledger.Record) error {
	r, err := ledger.CheckIntent(r)
	if err != nil {
		return fmt.Errorf("postgres: create intent: %w", err)
	}
	scopes := r.Scopes
	if scopes == nil {
		scopes = []string{}
	}
	// One statement, so the record and its first holder are one step: the
	// holder is inserted only if the record was.
	tag, err := s.pool.Exec(ctx, `WITH rec AS (
			INSERT INTO ledger_records (`+columns+`)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, '', NULL)
			ON CONFLICT (id) DO NOTHING
			RETURNING id),
		holder AS (
			INSERT INTO ledger_holders (ledger_id, job_id, project_id, pipeline_id, token_expires_at, held_since)
			SELECT id, $12, $10, $11, $23, $17 FROM rec WHERE $12 <> '' AND $23::timestamptz IS NOT NULL)
		SELECT 1 FROM rec`,
		r.ID, string(r.State), string(r.Kind), r.Owner, r.OwnerPath, scopes, r.Resource, r.Rule, r.Subject,
		r.ProjectID, r.PipelineID, r.JobID, r.TokenJTI, r.GitLabID, r.Username, r.SecretSHA256,
		ts(r.CreatedAt), nullTS(r.ExpiresAt), ts(r.NextAttemptAt), r.Attempts, r.LastError, nullTS(r.RevokedAt),
		nullTS(r.TokenExpiresAt), r.ReuseKey)
	if err != nil {
		return fmt.Errorf("postgres: create intent %s: %w", r.ID, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("postgres: create intent %s: %w", r.ID, ledger.ErrExists)
	}
	return nil
}

// Activate moves a Pending record to Active.
func (s *Store) Activate(ctx context.Context, id string, gitlabID int64, username, secretSHA256 string, expiresAt time.Time) error {
	sha, err := ledger.CheckFingerprint(secretSHA256)
	if err != nil {
		return fmt.Errorf("postgres: activate %s: %w", id, err)
	}
	if expiresAt.IsZero() {
		return fmt.Errorf("postgres: activate %s: no expiry, so it would never be revoked", id)
	}
	err = s.transition(ctx, id, nil,
		`UPDATE ledger_records SET state = 'active', gitlab_id = $2, username = $3, secret_sha256 = $4,
			expires_at = $5, next_attempt_at = $5
		WHERE id = $1 AND state = 'pending'`,
		id, gitlabID, username, sha, ts(expiresAt))
	if err != nil {
		return fmt.Errorf("postgres: activate %s: %w", id, err)
	}
	return nil
}

// Abandon moves a Pending record to Abandoned.
func (s *Store) Abandon(ctx context.Context, id, reason string) error {
	err := s.transition(ctx, id, []ledger.State{ledger.Abandoned},
		`UPDATE ledger_records SET state = 'abandoned', last_error = $2 WHERE id = $1 AND state = 'pending'`,
		id, ledger.CleanError(reason))
	if err != nil {
		return fmt.Errorf("postgres: abandon %s: %w", id, err)
	}
	return nil
}

// MarkRevoked moves a Pending or Active record to Revoked.
func (s *Store) MarkRevoked(ctx context.Context, id string, at time.Time) error {
	err := s.transition(ctx, id, []ledger.State{ledger.Revoked},
		`UPDATE ledger_records SET state = 'revoked', revoked_at = $2, secret_key_id = '', sealed_secret = NULL
		WHERE id = $1 AND state IN ('pending', 'active')`,
		id, nullTS(at))
	if err != nil {
		return fmt.Errorf("postgres: mark revoked %s: %w", id, err)
	}
	return nil
}

// RetryLater records a failed attempt.
func (s *Store) RetryLater(ctx context.Context, id string, next time.Time, lastErr string) error {
	if next.IsZero() {
		return fmt.Errorf("postgres: retry %s later: no next attempt time", id)
	}
	err := s.transition(ctx, id, nil,
		`UPDATE ledger_records SET attempts = attempts + 1, last_error = $2, next_attempt_at = $3
		WHERE id = $1 AND state IN ('pending', 'active')`,
		id, ledger.CleanError(lastErr), ts(next))
	if err != nil {
		return fmt.Errorf("postgres: retry %s later: %w", id, err)
	}
	return nil
}

// transition runs update, which changes record id if it is in a state the
// transition starts from. If it changes nothing, the record is missing
// (ErrNotFound), already where the transition leads (done: nil), or
// elsewhere (ErrConflict). States only move forward, so the second look
// cannot misjudge a record the update passed over.
func (s *Store) transition(ctx context.Context, id string, done []ledger.State, update string, args ...any) error {
	tag, err := s.pool.Exec(ctx, update, args...)
	if err != nil {
		return err
	}
	if tag.RowsAffected() > 0 {
		return nil
	}
	var state string
	err = s.pool.QueryRow(ctx, `SELECT state FROM ledger_records WHERE id = $1`, id).Scan(&state)
	if errors.Is(err, pgx.ErrNoRows) {
		return ledger.ErrNotFound
	}
	if err != nil {
		return err
	}
	if slices.Contains(done, ledger.State(state)) {
		return nil
	}
	return fmt.Errorf("%w (it is %s)", ledger.ErrConflict, state)
}

// ClaimDue claims at most limit due records for lease. Rows another
// transaction is claiming right now are skipped, not waited for.
func (s *Store) ClaimDue(ctx context.Context, now time.Time, lease time.Duration, limit int) ([]ledger.Record, error) {
	if err := ledger.CheckClaim(lease, limit); err != nil {
		return nil, fmt.Errorf("postgres: claim due: %w", err)
	}
	rows, err := s.pool.Query(ctx, `WITH due AS (
			SELECT id, next_attempt_at AS was FROM ledger_records
			WHERE state IN ('pending', 'active') AND next_attempt_at <= $1
			ORDER BY next_attempt_at, id
			LIMIT $2
			FOR UPDATE SKIP LOCKED)
		UPDATE ledger_records r SET next_attempt_at = $3
		FROM due WHERE r.id = due.id
		RETURNING due.was, `+prefixed("r.", columns),
		ts(now), limit, ts(now.Add(lease)))
	if err != nil {
		return nil, fmt.Errorf("postgres: claim due: %w", err)
	}
	type claimed struct {
		was time.Time
		rec ledger.Record
	}
	var cs []claimed
	for rows.Next() {
		var c claimed
		if c.rec, err = scanRecord(rows, &c.was); err != nil {
			rows.Close()
			return nil, fmt.Errorf("postgres: claim due: %w", err)
		}
		cs = append(cs, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("postgres: claim due: %w", err)
	}
	// RETURNING has no order: oldest due first, as selected.
	slices.SortFunc(cs, func(a, b claimed) int {
		if c := a.was.Compare(b.was); c != 0 {
			return c
		}
		return strings.Compare(a.rec.ID, b.rec.ID)
	})
	recs := make([]ledger.Record, len(cs))
	for i, c := range cs {
		recs[i] = c.rec
	}
	return recs, nil
}

// Get returns the record with that id.
func (s *Store) Get(ctx context.Context, id string) (ledger.Record, error) {
	r, err := s.one(ctx, `SELECT `+columns+` FROM ledger_records WHERE id = $1`, id)
	if err != nil {
		return ledger.Record{}, fmt.Errorf("postgres: get %s: %w", id, err)
	}
	return r, nil
}

// FindBySecret returns the record with that secret fingerprint.
func (s *Store) FindBySecret(ctx context.Context, secretSHA256 string) (ledger.Record, error) {
	sha, ok := ledger.LookupFingerprint(secretSHA256)
	if !ok {
		return ledger.Record{}, fmt.Errorf("postgres: find by secret: %w", ledger.ErrNotFound)
	}
	r, err := s.one(ctx, `SELECT `+columns+` FROM ledger_records
		WHERE secret_sha256 = $1 AND secret_sha256 <> '' ORDER BY created_at DESC, id LIMIT 1`, sha)
	if err != nil {
		return ledger.Record{}, fmt.Errorf("postgres: find by secret: %w", err)
	}
	return r, nil
}

func (s *Store) one(ctx context.Context, query string, args ...any) (ledger.Record, error) {
	rows, err := s.pool.Query(ctx, query, args...)
	if err != nil {
		return ledger.Record{}, err
	}
	recs, err := scanRecords(rows)
	if err != nil {
		return ledger.Record{}, err
	}
	if len(recs) == 0 {
		return ledger.Record{}, ledger.ErrNotFound
	}
	return recs[0], nil
}

// ListPending lists every Pending record, oldest first.
func (s *Store) ListPending(ctx context.Context) ([]ledger.Record, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+columns+` FROM ledger_records
		WHERE state = 'pending' ORDER BY created_at, id`)
	if err != nil {
		return nil, fmt.Errorf("postgres: list pending: %w", err)
	}
	recs, err := scanRecords(rows)
	if err != nil {
		return nil, fmt.Errorf("postgres: list pending: %w", err)
	}
	return recs, nil
}

// ReleaseClaims implements ledger.Store.
func (s *Store) ReleaseClaims(ctx context.Context) (int, error) {
	tag, err := s.pool.Exec(ctx, `UPDATE ledger_records SET next_attempt_at = expires_at
		WHERE state = 'active' AND expires_at IS NOT NULL AND next_attempt_at > expires_at`)
	if err != nil {
		return 0, fmt.Errorf("postgres: release claims: %w", err)
	}
	return int(tag.RowsAffected()), nil
}

// CountActive counts Active records.
func (s *Store) CountActive(ctx context.Context) (int, error) {
	var n int
	if err := s.pool.QueryRow(ctx, `SELECT count(*) FROM ledger_records WHERE state = 'active'`).Scan(&n); err != nil {
		return 0, fmt.Errorf("postgres: count active: %w", err)
	}
	return n, nil
}

func prefixed(prefix, cols string) string {
	parts := strings.Split(cols, ",")
	for i, p := range parts {
		parts[i] = prefix + strings.TrimSpace(p)
	}
	return strings.Join(parts, ", ")
}

// scanRecords reads every row and closes rows.
func scanRecords(rows pgx.Rows) ([]ledger.Record, error) {
	defer rows.Close()
	var recs []ledger.Record
	for rows.Next() {
		r, err := scanRecord(rows)
		if err != nil {
			return nil, err
		}
		recs = append(recs, r)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	return recs, nil
}

// scanRecord scans the columns, after any leading destinations in pre.
func scanRecord(row pgx.Row, pre ...any) (ledger.Record, error) {
	var (
		r                ledger.Record
		state, kind      string
		created, next    time.Time
		expires, revoked *time.Time
		tokenExpires     *time.Time
		attempts         int32
	)
	dest := append(pre, &r.ID, &state, &kind, &r.Owner, &r.OwnerPath, &r.Scopes, &r.Resource, &r.Rule, &r.Subject,
		&r.ProjectID, &r.PipelineID, &r.JobID, &r.TokenJTI, &r.GitLabID, &r.Username, &r.SecretSHA256,
		&created, &expires, &next, &attempts, &r.LastError, &revoked,
		&tokenExpires, &r.ReuseKey, &r.SecretKeyID, &r.SealedSecret)
	if err := row.Scan(dest...); err != nil {
		return ledger.Record{}, err
	}
	for _, p := range pre {
		if t, ok := p.(*time.Time); ok {
			*t = t.UTC()
		}
	}
	r.State, r.Kind = ledger.State(state), ledger.Kind(kind)
	if len(r.Scopes) == 0 {
		r.Scopes = nil
	}
	r.Attempts = int(attempts)
	r.CreatedAt = created.UTC()
	r.NextAttemptAt = next.UTC()
	if expires != nil {
		r.ExpiresAt = expires.UTC()
	}
	if revoked != nil {
		r.RevokedAt = revoked.UTC()
	}
	if tokenExpires != nil {
		r.TokenExpiresAt = tokenExpires.UTC()
	}
	if len(r.SealedSecret) == 0 {
		r.SealedSecret = nil
	}
	return r, nil
}

// ts is t as PostgreSQL keeps it: UTC, microseconds (pgx would truncate too;
// doing it here makes the rule visible).
func ts(t time.Time) time.Time { return t.UTC().Truncate(time.Microsecond) }

func nullTS(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	u := ts(t)
	return &u
}
