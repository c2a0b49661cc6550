package svctoken_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"gltoken.dev/gltoken/internal/postgres"
)

// Two replicas on PostgreSQL, each with its own store connection and file.
func TestTwoReplicasRotateOncePostgres(t *testing.T) {
	dsn := os.Getenv("GLTOKEN_TEST_POSTGRES_DSN")
	if dsn == "" {
		if os.Getenv("CI") != "" {
			t.Fatal("CI is set, so the PostgreSQL replicas must be tested: GLTOKEN_TEST_POSTGRES_DSN is not set")
		}
		t.Skip("GLTOKEN_TEST_POSTGRES_DSN not set: run `export GLTOKEN_TEST_POSTGRES_DSN=$(bash internal/postgres/testdb.sh)`")
	}
	dsn = freshSchema(t, dsn)
	a, err := postgres.Open(t.Context(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	b, err := postgres.Open(t.Context(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	testTwoReplicasRotateOnce(t, newFixture(t, 3*24*time.Hour), a, b)
}

func freshSchema(t *testing.T, dsn string) string {
	t.Helper()
	var r [6]byte
	_, _ = rand.Read(r[:])
	schema := "gltoken_svctoken_" + hex.EncodeToString(r[:])
	ctx := context.Background()
	admin, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("connect to the test database: %v", err)
	}
	if _, err := admin.Exec(ctx, "CREATE SCHEMA "+schema); err != nil {
		admin.Close(ctx)
		t.Fatal(err)
	}
	t.Cleanup(func() {
		defer admin.Close(ctx)
		_, _ = admin.Exec(ctx, "DROP SCHEMA "+schema+" CASCADE")
	})
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		u, err := url.Parse(dsn)
		if err != nil {
			t.Fatal("GLTOKEN_TEST_POSTGRES_DSN does not parse")
		}
		q := u.Query()
		q.Set("search_path", schema)
		u.RawQuery = q.Encode()
		return u.String()
	}
	return dsn + " search_path=" + schema
}
