package sqlite

import (
	"bufio"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"gltoken.dev/gltoken/internal/fingerprint"
	"gltoken.dev/gltoken/internal/ledger"
	"gltoken.dev/gltoken/internal/ledger/ledgertest"
)

func openTB(tb testing.TB, path string) *Store {
	tb.Helper()
	s, err := Open(context.Background(), path)
	if err != nil {
		tb.Fatalf("Open(%s): %v", path, err)
	}
	tb.Cleanup(func() { s.Close() })
	return s
}

func TestContract(t *testing.T) {
	ledgertest.Run(t, func(t *testing.T) ledger.Store {
		return openTB(t, filepath.Join(t.TempDir(), "state.db"))
	})
}

func TestContractTwoInstances(t *testing.T) {
	ledgertest.RunShared(t, func(t *testing.T) (ledger.Store, ledger.Store) {
		path := filepath.Join(t.TempDir(), "state.db")
		return openTB(t, path), openTB(t, path)
	})
}

func TestSurvivesReopen(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "state.db")
	t0 := time.Date(2026, 11, 27, 2, 0, 0, 123456000, time.UTC)

	s := openTB(t, path)
	if err := s.CreateIntent(ctx, ledgertest.NewRecord("kept-pending", t0, t0.Add(time.Minute))); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateIntent(ctx, ledgertest.NewRecord("kept-active", t0, t0.Add(time.Minute))); err != nil {
		t.Fatal(err)
	}
	sha := fingerprint.Of("gldt-kept")
	if err := s.Activate(ctx, "kept-active", 9, "gitlab+deploy-token-9", sha, t0.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	want, err := s.Get(ctx, "kept-active")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = openTB(t, path)
	got, err := s.FindBySecret(ctx, sha)
	if err != nil {
		t.Fatalf("FindBySecret after reopen: %v", err)
	}
	if got.ID != want.ID || got.State != ledger.Active || !got.NextAttemptAt.Equal(want.NextAttemptAt) ||
		!got.CreatedAt.Equal(t0) || strings.Join(got.Scopes, " ") != strings.Join(want.Scopes, " ") {
		t.Errorf("after reopen: %+v, want %+v", got, want)
	}
	pending, err := s.ListPending(ctx)
	if err != nil || len(pending) != 1 || pending[0].ID != "kept-pending" {
		t.Errorf("ListPending after reopen = %+v, %v", pending, err)
	}
	if n, err := s.CountActive(ctx); err != nil || n != 1 {
		t.Errorf("CountActive after reopen = %d, %v", n, err)
	}
}

// TestDurabilitySettings checks what makes an acknowledged record survive a
// crash: WAL, synchronous=FULL, on every write connection.
func TestDurabilitySettings(t *testing.T) {
	s := openTB(t, filepath.Join(t.TempDir(), "state.db"))
	ctx := t.Context()
	for _, tc := range []struct {
		pragma string
		want   string
	}{
		{"journal_mode", "wal"},
		{"synchronous", "2"},
		{"foreign_keys", "1"},
		{"busy_timeout", "10000"},
		{"user_version", fmt.Sprint(len(migrations))},
	} {
		var got string
		if err := s.writer.QueryRowContext(ctx, "PRAGMA "+tc.pragma).Scan(&got); err != nil {
			t.Fatalf("PRAGMA %s: %v", tc.pragma, err)
		}
		if got != tc.want {
			t.Errorf("PRAGMA %s = %s, want %s", tc.pragma, got, tc.want)
		}
	}
	var qo string
	if err := s.reader.QueryRowContext(ctx, "PRAGMA query_only").Scan(&qo); err != nil || qo != "1" {
		t.Errorf("reader query_only = %q, %v; want 1", qo, err)
	}
	// The claim query uses its index.
	var plan strings.Builder
	rows, err := s.writer.QueryContext(ctx, "EXPLAIN QUERY PLAN "+claimIDs, 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id, parent, notused int
		var detail string
		if err := rows.Scan(&id, &parent, &notused, &detail); err != nil {
			t.Fatal(err)
		}
		plan.WriteString(detail + "\n")
	}
	rows.Close()
	if !strings.Contains(plan.String(), "ledger_records_due") || strings.Contains(plan.String(), "TEMP B-TREE") {
		t.Errorf("ClaimDue's query does not walk ledger_records_due in order:\n%s", plan.String())
	}
}

func TestOpenCreatesFile0600(t *testing.T) {
	path := filepath.Join(t.TempDir(), "new.db")
	openTB(t, path)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Errorf("mode = %v, want 0600", perm)
	}
}

func TestOpenPathWithURICharacters(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a dir?x=1#frag%20")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "state?mode=ro.db")
	s := openTB(t, path)
	if err := s.CreateIntent(t.Context(), ledgertest.NewRecord("x", time.Now(), time.Now())); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); err != nil {
		t.Errorf("database not at the path given: %v", err)
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), "state?mode=ro.db") {
			t.Errorf("stray file %q in %s", e.Name(), dir)
		}
	}
}

func TestOpenErrors(t *testing.T) {
	dir := t.TempDir()
	notDB := filepath.Join(dir, "garbage.db")
	if err := os.WriteFile(notDB, []byte(strings.Repeat("this is not a database\n", 100)), 0o600); err != nil {
		t.Fatal(err)
	}
	aFile := filepath.Join(dir, "file")
	if err := os.WriteFile(aFile, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, dsn, want string
	}{
		{"empty", "", "no database path"},
		{"missing directory", filepath.Join(dir, "nope", "state.db"), "does not exist"},
		{"parent is a file", filepath.Join(aFile, "state.db"), "not a directory"},
		{"a directory", dir, "is a directory"},
		{"not a database", notDB, "not a database"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, err := Open(t.Context(), tc.dsn)
			if err == nil {
				s.Close()
				t.Fatal("Open succeeded")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Open: %v, want it to say %q", err, tc.want)
			}
		})
	}
	if _, err := os.Stat(filepath.Join(dir, "nope")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Open created the missing directory")
	}
}

func TestOpenRefusesNewerSchema(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	s := openTB(t, path)
	if _, err := s.writer.ExecContext(t.Context(), "PRAGMA user_version = 99"); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if s, err := Open(t.Context(), path); err == nil {
		s.Close()
		t.Fatal("Open accepted a newer schema")
	} else if !strings.Contains(err.Error(), "newer") {
		t.Errorf("Open: %v, want it to say the schema is newer", err)
	}
}

// TestNoSecretStored: whatever the caller does, the file holds fingerprints only.
func TestNoSecretStored(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	s := openTB(t, path)
	ctx := t.Context()
	const secret = "gldt-s3cr3tS3cr3tS3cr3t"
	now := time.Now()
	if err := s.CreateIntent(ctx, ledgertest.NewRecord("n", now, now)); err != nil {
		t.Fatal(err)
	}
	if err := s.Activate(ctx, "n", 1, "u", secret, now.Add(time.Hour)); err == nil {
		t.Fatal("Activate stored a raw secret as its fingerprint")
	} else if strings.Contains(err.Error(), secret) {
		t.Fatalf("the error quotes the secret: %v", err)
	}
	if err := s.Activate(ctx, "n", 1, "u", fingerprint.Of(secret), now.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	s.Close()
	for _, f := range []string{path, path + "-wal"} {
		b, err := os.ReadFile(f)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
		if strings.Contains(string(b), secret) {
			t.Errorf("%s contains the secret", f)
		}
	}
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var sha string
	if err := db.QueryRow("SELECT secret_sha256 FROM ledger_records WHERE id = 'n'").Scan(&sha); err != nil {
		t.Fatal(err)
	}
	if sha != fingerprint.Of(secret) {
		t.Errorf("stored %q, want the fingerprint", sha)
	}
}

func BenchmarkCreateActivate(b *testing.B) {
	ledgertest.BenchCreateActivate(b, openTB(b, filepath.Join(b.TempDir(), "state.db")))
}

func BenchmarkClaimDue(b *testing.B) {
	ledgertest.BenchClaimDue(b, openTB(b, filepath.Join(b.TempDir(), "state.db")))
}

// TestKillNineLosesNothing runs a writer in a child process, kills it with
// SIGKILL in the middle of its writes, and checks that every write the child
// saw acknowledged is in the database when it is opened again.
func TestKillNineLosesNothing(t *testing.T) {
	if os.Getenv("GLTOKEN_SQLITE_CRASH_WRITER") != "" {
		crashWriter()
		return
	}
	path := filepath.Join(t.TempDir(), "state.db")
	cmd := exec.Command(os.Args[0], "-test.run=^TestKillNineLosesNothing$")
	cmd.Env = append(os.Environ(), "GLTOKEN_SQLITE_CRASH_WRITER="+path)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// The child prints each id once CreateIntent (or Activate) has returned.
	const enough = 150
	var acked []string
	sc := bufio.NewScanner(out)
	for len(acked) < enough && sc.Scan() {
		acked = append(acked, sc.Text())
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	if len(acked) < enough {
		t.Fatalf("the child acknowledged only %d writes before it stopped", len(acked))
	}

	s := openTB(t, path)
	for _, line := range acked {
		id, activated := strings.CutSuffix(line, " active")
		r, err := s.Get(t.Context(), id)
		if err != nil {
			t.Errorf("acknowledged write of %s lost: %v", id, err)
			continue
		}
		if activated && r.State != ledger.Active {
			t.Errorf("acknowledged activation of %s lost: State %q", id, r.State)
		}
	}
}

// crashWriter is the child of TestKillNineLosesNothing: it writes until it is
// killed.
func crashWriter() {
	ctx := context.Background()
	s, err := Open(ctx, os.Getenv("GLTOKEN_SQLITE_CRASH_WRITER"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	now := time.Now()
	for i := 0; ; i++ {
		id := fmt.Sprintf("crash-%06d", i)
		if err := s.CreateIntent(ctx, ledgertest.NewRecord(id, now, now)); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		fmt.Println(id)
		if i%2 == 0 {
			if err := s.Activate(ctx, id, int64(i), "u", fingerprint.Of(id), now.Add(time.Hour)); err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(2)
			}
			fmt.Println(id + " active")
		}
	}
}

// TestMigratesVersion1: a ledger written before holders and sealed secrets
// opens with its records intact; they have no holders, no reuse key and no
// sealed secret, and take holders as any other.
func TestMigratesVersion1(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "state.db")
	db, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 11, 27, 2, 0, 0, 0, time.UTC)
	if _, err := db.ExecContext(ctx, migrations[0]+`;
		INSERT INTO ledger_records VALUES ('old', 'active', 'project_deploy_token', '42', 'platform/lib', '["read_repository"]',
			'https://gitlab.example.com/platform/lib.git', 'r', 's', '7', '1', '5005', 'jti', 9, 'gitlab+deploy-token-9', '', ?, ?, ?, 0, '', NULL);
		PRAGMA user_version = 1;`, t0.UnixMicro(), t0.Add(time.Hour).UnixMicro(), t0.Add(time.Hour).UnixMicro()); err != nil {
		t.Fatal(err)
	}
	db.Close()

	s := openTB(t, path)
	r, err := s.Get(ctx, "old")
	if err != nil {
		t.Fatal(err)
	}
	if r.State != ledger.Active || r.ReuseKey != "" || r.SealedSecret != nil || !r.TokenExpiresAt.IsZero() || !r.ExpiresAt.Equal(t0.Add(time.Hour)) {
		t.Errorf("migrated record = %+v", r)
	}
	if hs, err := s.Holders(ctx, "old"); err != nil || len(hs) != 0 {
		t.Errorf("Holders = %+v, %v; want none", hs, err)
	}
	if err := s.AddHolder(ctx, ledger.Holder{LedgerID: "old", JobID: "6006", TokenExpiresAt: t0.Add(2 * time.Hour), HeldSince: t0}); err != nil {
		t.Errorf("AddHolder on a migrated record: %v", err)
	}
}

// TestMigrateOwnerToID: a ledger of schema version 2 kept the owner as text
// (a decimal id, or a path in records from before ids); after the upgrade
// every record reads back, ids as numbers, paths in OwnerPath, with its
// holders and indexes.
func TestMigrateOwnerToID(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "state.db")
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=foreign_keys(1)")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.ExecContext(ctx, migrations[0]+";"+migrations[1]+"; PRAGMA user_version = 2"); err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 11, 27, 2, 0, 0, 0, time.UTC)
	for _, row := range [][3]string{{"by-id", "42", "platform/lib"}, {"by-path", "platform/old", "platform/old"}, {"no-path", "platform/older", ""}} {
		if _, err := db.ExecContext(ctx, `INSERT INTO ledger_records (id, state, kind, owner, owner_path, scopes, resource, rule, subject,
			project_id, pipeline_id, job_id, token_jti, gitlab_id, username, secret_sha256,
			created_at, expires_at, next_attempt_at, attempts, last_error, revoked_at)
			VALUES (?, 'active', 'project_deploy_token', ?, ?, '["read_repository"]', 'https://gitlab.example.com/platform/lib.git', 'r', 's',
			'7', '11', '12', 'jti', 5, 'gitlab+deploy-token-5', '', ?, ?, ?, 0, '', NULL)`,
			row[0], row[1], row[2], t0.UnixMicro(), t0.Add(time.Hour).UnixMicro(), t0.Add(time.Hour).UnixMicro()); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := db.ExecContext(ctx, `INSERT INTO ledger_holders VALUES ('by-id', '12', '7', '11', ?, ?, NULL)`,
		t0.Add(time.Hour).UnixMicro(), t0.UnixMicro()); err != nil {
		t.Fatal(err)
	}
	db.Close()

	s := openTB(t, path)
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
	// The reaper still finds due records, through its index.
	due, err := s.ClaimDue(ctx, t0.Add(2*time.Hour), time.Minute, 10)
	if err != nil || len(due) != 3 {
		t.Fatalf("ClaimDue after the upgrade: %d records, %v", len(due), err)
	}
}

func TestRotationContract(t *testing.T) {
	ledgertest.RunRotations(t, func(t *testing.T) (ledger.RotationStore, ledger.RotationStore) {
		path := filepath.Join(t.TempDir(), "state.db")
		return openTB(t, path), openTB(t, path)
	})
}
