// Package sqlite is the embedded ledger store: a ledger.Store on one SQLite
// file, for a daemon that runs alone (a laptop, a CI runner host). Open it
// with Open; it uses modernc.org/sqlite, so no cgo.
//
// Durability is the point of the ledger (a record acknowledged must survive
// kill -9 and power loss), so the database runs in WAL mode with
// synchronous=FULL. All writes go through one connection, so ClaimDue and the
// state transitions are atomic within the process; each runs in a BEGIN
// IMMEDIATE transaction, so they stay atomic when another process opens the
// same file. Reads use a small pool of read-only connections.
package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	_ "modernc.org/sqlite" // registers the "sqlite" driver

	"gltoken.dev/gltoken/internal/ledger"
)

// busyTimeout is how long a connection waits for another process's write
// lock before it gives up with SQLITE_BUSY.
const busyTimeout = 10 * time.Second

// readers is the size of the read connection pool.
const readers = 4

// Store is a ledger.Store on a SQLite file.
type Store struct {
	path   string
	writer *sql.DB // exactly one connection
	reader *sql.DB // query_only connections
	stmts  statements

	closeOnce sync.Once
	closeErr  error
}

var _ ledger.Store = (*Store)(nil)

// Open opens (creating it with mode 0600 if needed) the SQLite ledger at the
// file path dsn and brings its schema up to date. The directory must exist.
func Open(ctx context.Context, dsn string) (*Store, error) {
	if dsn == "" {
		return nil, errors.New("sqlite: no database path")
	}
	path, err := filepath.Abs(dsn)
	if err != nil {
		return nil, fmt.Errorf("sqlite: %w", err)
	}
	if err := createFile(path); err != nil {
		return nil, fmt.Errorf("sqlite: %w", err)
	}

	// A URI filename, so that no character of the path is taken for a
	// parameter; mode=rw because the file exists now and must not be
	// created anywhere else.
	uri := "file:" + (&url.URL{Path: path}).EscapedPath() + "?mode=rw"
	pragmas := fmt.Sprintf("&_pragma=busy_timeout(%d)", busyTimeout.Milliseconds())
	s := &Store{path: path}
	s.writer, err = sql.Open("sqlite", uri+pragmas+
		"&_txlock=immediate"+
		"&_pragma=foreign_keys(1)"+
		"&_pragma=journal_mode(WAL)"+
		"&_pragma=synchronous(FULL)")
	if err != nil {
		return nil, fmt.Errorf("sqlite: open %s: %w", path, err)
	}
	s.writer.SetMaxOpenConns(1)
	s.writer.SetMaxIdleConns(1)
	s.writer.SetConnMaxLifetime(0)
	s.writer.SetConnMaxIdleTime(0)

	if err := s.migrate(ctx); err != nil {
		s.writer.Close()
		return nil, fmt.Errorf("sqlite: open %s: %w", path, err)
	}
	if err := s.stmts.prepare(ctx, s.writer); err != nil {
		s.writer.Close()
		return nil, fmt.Errorf("sqlite: open %s: %w", path, err)
	}

	s.reader, err = sql.Open("sqlite", uri+pragmas+"&_pragma=query_only(1)")
	if err != nil {
		s.writer.Close()
		return nil, fmt.Errorf("sqlite: open %s: %w", path, err)
	}
	s.reader.SetMaxOpenConns(readers)
	s.reader.SetMaxIdleConns(readers)
	if err := s.reader.PingContext(ctx); err != nil {
		s.Close()
		return nil, fmt.Errorf("sqlite: open %s: %w", path, err)
	}
	return s, nil
}

// createFile makes sure path is a regular file, creating it with mode 0600
// (SQLite gives its -wal and -shm files the same mode). It does not create
// directories: a missing one is most likely a configuration mistake.
func createFile(path string) error {
	dir := filepath.Dir(path)
	fi, err := os.Stat(dir)
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("open %s: directory %s does not exist", path, dir)
	}
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("open %s: %s is not a directory", path, dir)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	fi, err = f.Stat()
	f.Close()
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("open %s: not a regular file", path)
	}
	return nil
}

// migrations[i] brings the schema from version i to i+1 (PRAGMA user_version).
var migrations = []string{
	`CREATE TABLE ledger_records (
		id              TEXT PRIMARY KEY NOT NULL,
		state           TEXT NOT NULL CHECK (state IN ('pending', 'active', 'revoked', 'abandoned')),
		kind            TEXT NOT NULL,
		owner           TEXT NOT NULL,
		owner_path      TEXT NOT NULL,
		scopes          TEXT NOT NULL, -- JSON array of strings
		resource        TEXT NOT NULL,
		rule            TEXT NOT NULL,
		subject         TEXT NOT NULL,
		project_id      TEXT NOT NULL,
		pipeline_id     TEXT NOT NULL,
		job_id          TEXT NOT NULL,
		token_jti       TEXT NOT NULL,
		gitlab_id       INTEGER NOT NULL,
		username        TEXT NOT NULL,
		secret_sha256   TEXT NOT NULL, -- hex SHA-256 of the secret, '' until active
		-- Times are Unix microseconds, UTC; NULL is the zero time.
		created_at      INTEGER NOT NULL,
		expires_at      INTEGER,
		next_attempt_at INTEGER NOT NULL,
		attempts        INTEGER NOT NULL,
		last_error      TEXT NOT NULL,
		revoked_at      INTEGER
	) STRICT;
	-- ClaimDue walks this index in order and stops at its limit.
	CREATE INDEX ledger_records_due ON ledger_records (next_attempt_at, id) WHERE state IN ('pending', 'active');
	CREATE INDEX ledger_records_state ON ledger_records (state, created_at);
	CREATE INDEX ledger_records_secret ON ledger_records (secret_sha256) WHERE secret_sha256 <> '';
	CREATE INDEX ledger_records_created ON ledger_records (created_at);`,

	// 2: holders (which jobs hold each credential), reuse and sealed secrets.
	`ALTER TABLE ledger_records ADD COLUMN token_expires_at INTEGER;
	ALTER TABLE ledger_records ADD COLUMN reuse_key TEXT NOT NULL DEFAULT '';
	ALTER TABLE ledger_records ADD COLUMN secret_key_id TEXT NOT NULL DEFAULT '';
	ALTER TABLE ledger_records ADD COLUMN sealed_secret BLOB;
	CREATE INDEX ledger_records_reuse ON ledger_records (reuse_key, expires_at) WHERE state = 'active' AND reuse_key <> '';
	CREATE TABLE ledger_holders (
		ledger_id        TEXT NOT NULL REFERENCES ledger_records (id),
		job_id           TEXT NOT NULL,
		project_id       TEXT NOT NULL,
		pipeline_id      TEXT NOT NULL,
		token_expires_at INTEGER NOT NULL,
		held_since       INTEGER NOT NULL,
		released_at      INTEGER, -- NULL while the job holds it
		PRIMARY KEY (ledger_id, job_id)
	) STRICT;
	CREATE INDEX ledger_holders_job ON ledger_holders (job_id, held_since, ledger_id);`,

	// 3: owner becomes the GitLab id (an integer). A record written before
	// owners were ids keeps its path in owner_path, with owner 0. (SQLite
	// cannot change a column's type in place; a new column takes its place.)
	`ALTER TABLE ledger_records ADD COLUMN owner_id INTEGER NOT NULL DEFAULT 0;
	UPDATE ledger_records SET owner_path = owner WHERE owner_path = '' AND (owner = '' OR owner GLOB '*[^0-9]*');
	UPDATE ledger_records SET owner_id = CAST(owner AS INTEGER) WHERE owner <> '' AND owner NOT GLOB '*[^0-9]*' AND length(owner) <= 18;
	ALTER TABLE ledger_records DROP COLUMN owner;
	ALTER TABLE ledger_records RENAME COLUMN owner_id TO owner;`,
	// 4: service token self-rotation (see ledger.RotationStore).
	`CREATE TABLE ledger_rotations (
		old_sha256 TEXT PRIMARY KEY NOT NULL,
		holder     TEXT NOT NULL,
		claimed_at INTEGER NOT NULL, -- Unix microseconds, UTC
		new_sha256 TEXT NOT NULL,    -- '' until completed
		sealed     BLOB,
		done_at    INTEGER
	) STRICT;`,
	// 5: "does any job still hold it" (AddHolder, Reusable, ReleaseJob) is one
	// index probe however many jobs once held the credential and let go.
	`CREATE INDEX ledger_holders_holding ON ledger_holders (ledger_id) WHERE released_at IS NULL;`,
}

// migrate checks the connection's durability settings and brings the schema
// up to date in one transaction.
func (s *Store) migrate(ctx context.Context) error {
	var mode string
	if err := s.writer.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode); err != nil {
		return fmt.Errorf("read journal mode: %w", err)
	}
	if !strings.EqualFold(mode, "wal") {
		return fmt.Errorf("journal mode is %q, not WAL (is the file on a filesystem without shared memory?)", mode)
	}
	var sync int
	if err := s.writer.QueryRowContext(ctx, "PRAGMA synchronous").Scan(&sync); err != nil {
		return fmt.Errorf("read synchronous: %w", err)
	}
	if sync != 2 { // FULL
		return fmt.Errorf("synchronous is %d, not FULL (2)", sync)
	}

	tx, err := s.writer.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin migration: %w", err)
	}
	defer tx.Rollback()
	var version int
	if err := tx.QueryRowContext(ctx, "PRAGMA user_version").Scan(&version); err != nil {
		return fmt.Errorf("read schema version: %w", err)
	}
	if version > len(migrations) {
		return fmt.Errorf("schema version %d is newer than this program knows (%d): refusing to touch it", version, len(migrations))
	}
	if version == len(migrations) {
		return nil
	}
	for v := version; v < len(migrations); v++ {
		if _, err := tx.ExecContext(ctx, migrations[v]); err != nil {
			return fmt.Errorf("migrate schema to version %d: %w", v+1, err)
		}
	}
	// PRAGMA takes no parameters; the value is our own integer.
	if _, err := tx.ExecContext(ctx, fmt.Sprintf("PRAGMA user_version = %d", len(migrations))); err != nil {
		return fmt.Errorf("set schema version: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit migration: %w", err)
	}
	return nil
}

// Close closes the store. It is safe to call more than once.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		var errs []error
		if s.reader != nil {
			errs = append(errs, s.reader.Close())
		}
		errs = append(errs, s.stmts.close())
		errs = append(errs, s.writer.Close())
		s.closeErr = errors.Join(errs...)
	})
	return s.closeErr
}

// Ping checks that both connection pools can reach the database.
func (s *Store) Ping(ctx context.Context) error {
	var n int
	if err := s.reader.QueryRowContext(ctx, "SELECT count(*) FROM ledger_records WHERE 0").Scan(&n); err != nil {
		return fmt.Errorf("sqlite: ping: %w", err)
	}
	if err := s.writer.PingContext(ctx); err != nil {
		return fmt.Errorf("sqlite: ping: %w", err)
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
		return fmt.Errorf("sqlite: create intent: %w", err)
	}
	scopes, err := encodeScopes(r.Scopes)
	if err != nil {
		return fmt.Errorf("sqlite: create intent %s: %w", r.ID, err)
	}
	tx, err := s.writer.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("sqlite: create intent %s: %w", r.ID, err)
	}
	defer tx.Rollback()
	res, err := tx.ExecContext(ctx, `INSERT INTO ledger_records (`+columns+`)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, '', NULL)
		ON CONFLICT (id) DO NOTHING`,
		r.ID, string(r.State), string(r.Kind), r.Owner, r.OwnerPath, scopes, r.Resource, r.Rule, r.Subject,
		r.ProjectID, r.PipelineID, r.JobID, r.TokenJTI, r.GitLabID, r.Username, r.SecretSHA256,
		micros(r.CreatedAt), nullMicros(r.ExpiresAt), micros(r.NextAttemptAt), r.Attempts, r.LastError, nullMicros(r.RevokedAt),
		nullMicros(r.TokenExpiresAt), r.ReuseKey)
	if err != nil {
		return fmt.Errorf("sqlite: create intent %s: %w", r.ID, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return fmt.Errorf("sqlite: create intent %s: %w", r.ID, err)
	}
	if n == 0 {
		return fmt.Errorf("sqlite: create intent %s: %w", r.ID, ledger.ErrExists)
	}
	if h, ok := ledger.FirstHolder(r); ok {
		if _, err := tx.StmtContext(ctx, s.stmts.holderInsert).ExecContext(ctx,
			h.LedgerID, h.JobID, h.ProjectID, h.PipelineID, micros(h.TokenExpiresAt), micros(h.HeldSince)); err != nil {
			return fmt.Errorf("sqlite: create intent %s: first holder: %w", r.ID, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("sqlite: create intent %s: %w", r.ID, err)
	}
	return nil
}

// Activate moves a Pending record to Active.
func (s *Store) Activate(ctx context.Context, id string, gitlabID int64, username, secretSHA256 string, expiresAt time.Time) error {
	sha, err := ledger.CheckFingerprint(secretSHA256)
	if err != nil {
		return fmt.Errorf("sqlite: activate %s: %w", id, err)
	}
	if expiresAt.IsZero() {
		return fmt.Errorf("sqlite: activate %s: no expiry, so it would never be revoked", id)
	}
	exp := micros(expiresAt)
	err = s.transition(ctx, id, nil,
		`UPDATE ledger_records SET state = 'active', gitlab_id = ?, username = ?, secret_sha256 = ?,
			expires_at = ?, next_attempt_at = ?
		WHERE id = ? AND state = 'pending'`,
		gitlabID, username, sha, exp, exp, id)
	if err != nil {
		return fmt.Errorf("sqlite: activate %s: %w", id, err)
	}
	return nil
}

// Abandon moves a Pending record to Abandoned.
func (s *Store) Abandon(ctx context.Context, id, reason string) error {
	err := s.transition(ctx, id, []ledger.State{ledger.Abandoned},
		`UPDATE ledger_records SET state = 'abandoned', last_error = ? WHERE id = ? AND state = 'pending'`,
		ledger.CleanError(reason), id)
	if err != nil {
		return fmt.Errorf("sqlite: abandon %s: %w", id, err)
	}
	return nil
}

// MarkRevoked moves a Pending or Active record to Revoked.
func (s *Store) MarkRevoked(ctx context.Context, id string, at time.Time) error {
	err := s.transition(ctx, id, []ledger.State{ledger.Revoked},
		`UPDATE ledger_records SET state = 'revoked', revoked_at = ?, secret_key_id = '', sealed_secret = NULL
		WHERE id = ? AND state IN ('pending', 'active')`,
		nullMicros(at), id)
	if err != nil {
		return fmt.Errorf("sqlite: mark revoked %s: %w", id, err)
	}
	return nil
}

// RetryLater records a failed attempt.
func (s *Store) RetryLater(ctx context.Context, id string, next time.Time, lastErr string) error {
	if next.IsZero() {
		return fmt.Errorf("sqlite: retry %s later: no next attempt time", id)
	}
	err := s.transition(ctx, id, nil,
		`UPDATE ledger_records SET attempts = attempts + 1, last_error = ?, next_attempt_at = ?
		WHERE id = ? AND state IN ('pending', 'active')`,
		ledger.CleanError(lastErr), micros(next), id)
	if err != nil {
		return fmt.Errorf("sqlite: retry %s later: %w", id, err)
	}
	return nil
}

// transition runs update, which changes record id if it is in a state the
// transition starts from. If it changes nothing, the record is missing
// (ErrNotFound), already where the transition leads (done: nil), or
// elsewhere (ErrConflict). The two statements share one write transaction.
func (s *Store) transition(ctx context.Context, id string, done []ledger.State, update string, args ...any) error {
	tx, err := s.writer.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	res, err := tx.ExecContext(ctx, update, args...)
	if err != nil {
		return err
	}
	n, err := res.RowsAffected()
	if err != nil {
		return err
	}
	if n == 0 {
		var state string
		err := tx.QueryRowContext(ctx, `SELECT state FROM ledger_records WHERE id = ?`, id).Scan(&state)
		if errors.Is(err, sql.ErrNoRows) {
			return ledger.ErrNotFound
		}
		if err != nil {
			return err
		}
		for _, d := range done {
			if ledger.State(state) == d {
				return nil
			}
		}
		return fmt.Errorf("%w (it is %s)", ledger.ErrConflict, state)
	}
	return tx.Commit()
}

// claimIDs selects the ids of the records ClaimDue takes (parameters: now,
// limit), walking the due index in order. INDEXED BY because SQLite's planner,
// without statistics, would rather take the state index and sort.
const claimIDs = `SELECT id FROM ledger_records INDEXED BY ledger_records_due
	WHERE state IN ('pending', 'active') AND next_attempt_at <= ?
	ORDER BY next_attempt_at, id LIMIT ?`

// ClaimDue claims at most limit due records for lease.
func (s *Store) ClaimDue(ctx context.Context, now time.Time, lease time.Duration, limit int) ([]ledger.Record, error) {
	if err := ledger.CheckClaim(lease, limit); err != nil {
		return nil, fmt.Errorf("sqlite: claim due: %w", err)
	}
	until := now.Add(lease)
	tx, err := s.writer.BeginTx(ctx, nil) // BEGIN IMMEDIATE: holds the write lock throughout
	if err != nil {
		return nil, fmt.Errorf("sqlite: claim due: %w", err)
	}
	defer tx.Rollback()
	rows, err := tx.QueryContext(ctx, `SELECT `+columns+` FROM ledger_records WHERE id IN (`+claimIDs+`)
		ORDER BY next_attempt_at, id`, micros(now), limit)
	if err != nil {
		return nil, fmt.Errorf("sqlite: claim due: %w", err)
	}
	recs, err := scanRecords(rows)
	if err != nil {
		return nil, fmt.Errorf("sqlite: claim due: %w", err)
	}
	if len(recs) == 0 {
		return nil, nil
	}
	// The same selection, in the same transaction, so the same rows.
	res, err := tx.ExecContext(ctx, `UPDATE ledger_records SET next_attempt_at = ? WHERE id IN (`+claimIDs+`)`,
		micros(until), micros(now), limit)
	if err != nil {
		return nil, fmt.Errorf("sqlite: claim due: %w", err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return nil, fmt.Errorf("sqlite: claim due: %w", err)
	}
	if n != int64(len(recs)) {
		return nil, fmt.Errorf("sqlite: claim due: claimed %d records of %d selected", n, len(recs))
	}
	if err := tx.Commit(); err != nil {
		return nil, fmt.Errorf("sqlite: claim due: %w", err)
	}
	for i := range recs {
		recs[i].NextAttemptAt = fromMicros(micros(until))
	}
	return recs, nil
}

// Get returns the record with that id.
func (s *Store) Get(ctx context.Context, id string) (ledger.Record, error) {
	r, err := s.one(ctx, `SELECT `+columns+` FROM ledger_records WHERE id = ?`, id)
	if err != nil {
		return ledger.Record{}, fmt.Errorf("sqlite: get %s: %w", id, err)
	}
	return r, nil
}

// FindBySecret returns the record with that secret fingerprint.
func (s *Store) FindBySecret(ctx context.Context, secretSHA256 string) (ledger.Record, error) {
	sha, ok := ledger.LookupFingerprint(secretSHA256)
	if !ok {
		return ledger.Record{}, fmt.Errorf("sqlite: find by secret: %w", ledger.ErrNotFound)
	}
	r, err := s.one(ctx, `SELECT `+columns+` FROM ledger_records
		WHERE secret_sha256 = ? AND secret_sha256 <> '' ORDER BY created_at DESC, id LIMIT 1`, sha)
	if err != nil {
		return ledger.Record{}, fmt.Errorf("sqlite: find by secret: %w", err)
	}
	return r, nil
}

func (s *Store) one(ctx context.Context, query string, args ...any) (ledger.Record, error) {
	rows, err := s.reader.QueryContext(ctx, query, args...)
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
	rows, err := s.reader.QueryContext(ctx, `SELECT `+columns+` FROM ledger_records
		WHERE state = 'pending' ORDER BY created_at, id`)
	if err != nil {
		return nil, fmt.Errorf("sqlite: list pending: %w", err)
	}
	recs, err := scanRecords(rows)
	if err != nil {
		return nil, fmt.Errorf("sqlite: list pending: %w", err)
	}
	return recs, nil
}

// ReleaseClaims implements ledger.Store.
func (s *Store) ReleaseClaims(ctx context.Context) (int, error) {
	res, err := s.writer.ExecContext(ctx, `UPDATE ledger_records SET next_attempt_at = expires_at
		WHERE state = 'active' AND expires_at IS NOT NULL AND next_attempt_at > expires_at`)
	if err != nil {
		return 0, fmt.Errorf("sqlite: release claims: %w", err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return 0, fmt.Errorf("sqlite: release claims: %w", err)
	}
	return int(n), nil
}

// CountActive counts Active records.
func (s *Store) CountActive(ctx context.Context) (int, error) {
	var n int
	if err := s.reader.QueryRowContext(ctx, `SELECT count(*) FROM ledger_records WHERE state = 'active'`).Scan(&n); err != nil {
		return 0, fmt.Errorf("sqlite: count active: %w", err)
	}
	return n, nil
}

// scanRecords reads every row and closes rows.
func scanRecords(rows *sql.Rows) ([]ledger.Record, error) {
	defer rows.Close()
	var recs []ledger.Record
	for rows.Next() {
		var (
			r                   ledger.Record
			state, kind, scopes string
			created, next       int64
			expires, revoked    sql.NullInt64
			tokenExpires        sql.NullInt64
		)
		if err := rows.Scan(&r.ID, &state, &kind, &r.Owner, &r.OwnerPath, &scopes, &r.Resource, &r.Rule, &r.Subject,
			&r.ProjectID, &r.PipelineID, &r.JobID, &r.TokenJTI, &r.GitLabID, &r.Username, &r.SecretSHA256,
			&created, &expires, &next, &r.Attempts, &r.LastError, &revoked,
			&tokenExpires, &r.ReuseKey, &r.SecretKeyID, &r.SealedSecret); err != nil {
			return nil, err
		}
		r.TokenExpiresAt = fromNullMicros(tokenExpires)
		if len(r.SealedSecret) == 0 {
			r.SealedSecret = nil
		}
		r.State, r.Kind = ledger.State(state), ledger.Kind(kind)
		if err := json.Unmarshal([]byte(scopes), &r.Scopes); err != nil {
			return nil, fmt.Errorf("record %s: scopes: %w", r.ID, err)
		}
		if len(r.Scopes) == 0 {
			r.Scopes = nil
		}
		r.CreatedAt = fromMicros(created)
		r.ExpiresAt = fromNullMicros(expires)
		r.NextAttemptAt = fromMicros(next)
		r.RevokedAt = fromNullMicros(revoked)
		recs = append(recs, r)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	return recs, nil
}

func encodeScopes(scopes []string) (string, error) {
	if scopes == nil {
		scopes = []string{}
	}
	b, err := json.Marshal(scopes)
	if err != nil {
		return "", fmt.Errorf("scopes: %w", err)
	}
	return string(b), nil
}

// Times are stored as Unix microseconds (UTC by definition).
func micros(t time.Time) int64 { return t.UnixMicro() }

func nullMicros(t time.Time) sql.NullInt64 {
	if t.IsZero() {
		return sql.NullInt64{}
	}
	return sql.NullInt64{Int64: t.UnixMicro(), Valid: true}
}

func fromMicros(us int64) time.Time { return time.UnixMicro(us).UTC() }

func fromNullMicros(n sql.NullInt64) time.Time {
	if !n.Valid {
		return time.Time{}
	}
	return fromMicros(n.Int64)
}
