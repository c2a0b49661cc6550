package postgres

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"gltoken.dev/gltoken/internal/ledger"
	"gltoken.dev/gltoken/internal/ledger/ledgertest"
)

// dsnEnv names the database the tests use; internal/postgres/testdb.sh sets
// one up and prints its DSN.
const dsnEnv = "GLTOKEN_TEST_POSTGRES_DSN"

// testDSN returns the test database's DSN. Without one the tests skip, but
// never in CI (CI set), where a missing database is a failure.
func testDSN(tb testing.TB) string {
	tb.Helper()
	dsn := os.Getenv(dsnEnv)
	if dsn != "" {
		return dsn
	}
	const how = dsnEnv + ` is not set; run: export ` + dsnEnv + `="$(internal/postgres/testdb.sh)"`
	if os.Getenv("CI") != "" {
		tb.Fatal("CI is set, so the PostgreSQL store must be tested: " + how)
	}
	tb.Skip("PostgreSQL store not tested: " + how)
	return ""
}

// freshSchema creates an empty schema for tb, dropped when tb ends, and
// returns a DSN whose search_path points at it.
func freshSchema(tb testing.TB) string {
	tb.Helper()
	dsn := testDSN(tb)
	var b [6]byte
	rand.Read(b[:])
	schema := "gltoken_test_" + hex.EncodeToString(b[:])
	ctx := context.Background()
	admin, err := pgx.Connect(ctx, dsn)
	if err != nil {
		tb.Fatalf("connect to the test database: %v", err)
	}
	if _, err := admin.Exec(ctx, "CREATE SCHEMA "+schema); err != nil {
		admin.Close(ctx)
		tb.Fatalf("create schema: %v", err)
	}
	tb.Cleanup(func() {
		defer admin.Close(ctx)
		if _, err := admin.Exec(ctx, "DROP SCHEMA "+schema+" CASCADE"); err != nil {
			tb.Errorf("drop schema %s: %v", schema, err)
		}
	})
	return withSearchPath(tb, dsn, schema)
}

func withSearchPath(tb testing.TB, dsn, schema string) string {
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		u, err := url.Parse(dsn)
		if err != nil {
			tb.Fatalf("%s does not parse as a URL", dsnEnv)
		}
		q := u.Query()
		q.Set("search_path", schema)
		u.RawQuery = q.Encode()
		return u.String()
	}
	return dsn + " search_path=" + schema
}

// openTB opens a store on dsn, closed when tb ends (stores are closed before
// their schema is dropped: cleanups run last-in first-out).
func openTB(tb testing.TB, dsn string) *Store {
	tb.Helper()
	s, err := Open(context.Background(), dsn)
	if err != nil {
		tb.Fatalf("Open: %v", err)
	}
	tb.Cleanup(func() { s.Close() })
	return s
}

func TestContract(t *testing.T) {
	testDSN(t)
	ledgertest.Run(t, func(t *testing.T) ledger.Store {
		return openTB(t, freshSchema(t))
	})
}

func TestContractTwoReplicas(t *testing.T) {
	testDSN(t)
	ledgertest.RunShared(t, func(t *testing.T) (ledger.Store, ledger.Store) {
		dsn := freshSchema(t)
		return openTB(t, dsn), openTB(t, dsn)
	})
}

// TestReplicasStartTogether: replicas opening a new database at once all
// succeed, and the schema is created once.
func TestReplicasStartTogether(t *testing.T) {
	dsn := freshSchema(t)
	const replicas = 6
	var wg sync.WaitGroup
	stores := make([]*Store, replicas)
	errs := make([]error, replicas)
	start := make(chan struct{})
	for i := range replicas {
		wg.Go(func() {
			<-start
			stores[i], errs[i] = Open(context.Background(), dsn)
		})
	}
	close(start)
	wg.Wait()
	for i := range replicas {
		if errs[i] != nil {
			t.Errorf("replica %d: Open: %v", i, errs[i])
			continue
		}
		defer stores[i].Close()
	}
	if t.Failed() {
		return
	}
	var versions int
	if err := stores[0].pool.QueryRow(t.Context(), `SELECT count(*) FROM ledger_schema`).Scan(&versions); err != nil {
		t.Fatal(err)
	}
	if versions != 1 {
		t.Errorf("ledger_schema has %d rows, want 1", versions)
	}
	now := time.Now()
	if err := stores[1].CreateIntent(t.Context(), ledgertest.NewRecord("r", now, now)); err != nil {
		t.Fatal(err)
	}
	if _, err := stores[replicas-1].Get(t.Context(), "r"); err != nil {
		t.Errorf("another replica does not see the record: %v", err)
	}
}

func TestReopenKeepsData(t *testing.T) {
	dsn := freshSchema(t)
	ctx := t.Context()
	s := openTB(t, dsn)
	now := time.Now()
	if err := s.CreateIntent(ctx, ledgertest.NewRecord("kept", now, now)); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = openTB(t, dsn)
	if r, err := s.Get(ctx, "kept"); err != nil || r.State != ledger.Pending {
		t.Errorf("after reopen: %+v, %v", r, err)
	}
}

func TestOpenRefusesNewerSchema(t *testing.T) {
	dsn := freshSchema(t)
	s := openTB(t, dsn)
	if _, err := s.pool.Exec(t.Context(), `UPDATE ledger_schema SET version = 99`); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if s, err := Open(t.Context(), dsn); err == nil {
		s.Close()
		t.Fatal("Open accepted a newer schema")
	} else if !strings.Contains(err.Error(), "newer") {
		t.Errorf("Open: %v, want it to say the schema is newer", err)
	}
}

// TestOpenErrorsHidePassword: a DSN that does not parse, or a server that
// refuses, never puts the password in the error.
func TestOpenErrorsHidePassword(t *testing.T) {
	const pw = "hunter2-very-secret"
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	for _, dsn := range []string{
		"postgres://gltoken:" + pw + "@127.0.0.1:1/x?sslmode=disable&connect_timeout=5",
		"postgres://gltoken:" + pw + "@127.0.0.1:5432/x?sslmode=bogus",
		"host=127.0.0.1 port=1 user=gltoken password=" + pw + " sslmode=disable connect_timeout=5",
		"host=127.0.0.1 password='" + pw + " unterminated",
		"postgres://gltoken:" + pw + "@[::1:5432/x",
	} {
		s, err := Open(ctx, dsn)
		if err == nil {
			s.Close()
			t.Errorf("Open succeeded on a bad DSN")
			continue
		}
		if strings.Contains(err.Error(), pw) {
			t.Errorf("Open's error shows the password: %v", err)
		}
	}
}

func BenchmarkCreateActivate(b *testing.B) {
	ledgertest.BenchCreateActivate(b, openTB(b, freshSchema(b)))
}

func BenchmarkClaimDue(b *testing.B) {
	ledgertest.BenchClaimDue(b, openTB(b, freshSchema(b)))
}

// TestMigrateOwnerToID: a ledger of schema version 2 kept the owner as text
// (a decimal id, or a path in records from before ids); after the upgrade
// every record reads back, ids as numbers, paths in OwnerPath, with its
// holders.
func TestMigrateOwnerToID(t *testing.T) {
	dsn := freshSchema(t)
	ctx := t.Context()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range migrations[:2] {
		if _, err := conn.Exec(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := conn.Exec(ctx, `CREATE TABLE ledger_schema (version integer NOT NULL); INSERT INTO ledger_schema VALUES (2)`); err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 11, 27, 2, 0, 0, 0, time.UTC)
	for _, row := range [][3]string{{"by-id", "42", "platform/lib"}, {"by-path", "platform/old", "platform/old"}, {"no-path", "platform/older", ""}} {
		if _, err := conn.Exec(ctx, `INSERT INTO ledger_records (id, state, kind, owner, owner_path, scopes, resource, rule, subject,
			project_id, pipeline_id, job_id, token_jti, gitlab_id, username, secret_sha256,
			created_at, expires_at, next_attempt_at, attempts, last_error, revoked_at)
			VALUES ($1, 'active', 'project_deploy_token', $2, $3, '{read_repository}', 'https://gitlab.example.com/platform/lib.git', 'r', 's',
			'7', '11', '12', 'jti', 5, 'gitlab+deploy-token-5', '', $4, $5, $5, 0, '', NULL)`,
			row[0], row[1], row[2], t0, t0.Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := conn.Exec(ctx, `INSERT INTO ledger_holders VALUES ('by-id', '12', '7', '11', $1, $2, NULL)`, t0.Add(time.Hour), t0); err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)

	s := openTB(t, dsn)
	for _, tc := range []struct {
		id        string
		owner     int64
		ownerPath string
	}{
		{"by-id", 42, "platform/lib"},
		{"by-path", 0, "platform/old"},
		{"no-path", 0, "platform/older"},
	} {
		r, err := s.Get(ctx, tc.id)
		if err != nil {
			t.Fatalf("Get(%s) after the upgrade: %v", tc.id, err)
		}
		if r.Owner != tc.owner || r.OwnerPath != tc.ownerPath || r.State != ledger.Active || r.GitLabID != 5 || len(r.Scopes) != 1 {
			t.Errorf("%s after the upgrade: owner %d %q, %s #%d %v; want owner %d %q", tc.id, r.Owner, r.OwnerPath, r.State, r.GitLabID, r.Scopes, tc.owner, tc.ownerPath)
		}
	}
	if hs, err := s.Holders(ctx, "by-id"); err != nil || len(hs) != 1 {
		t.Errorf("Holders after the upgrade = %+v, %v; want the one", hs, err)
	}
}

func TestRotationContractTwoReplicas(t *testing.T) {
	testDSN(t)
	ledgertest.RunRotations(t, func(t *testing.T) (ledger.RotationStore, ledger.RotationStore) {
		dsn := freshSchema(t)
		return openTB(t, dsn), openTB(t, dsn)
	})
}
