package svctoken

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestTakeSeed: the read-only source (systemd's LoadCredential= copy) fills
// the writable token file the first time; a rotated successor in the file is
// kept while the source still holds the token taken before; a new token at
// the source (an operator's recovery) replaces the file.
func TestTakeSeed(t *testing.T) {
	dir := t.TempDir()
	seed, file := filepath.Join(dir, "cred-gitlab-token"), filepath.Join(dir, "state", "gitlab-token")
	if err := os.Mkdir(filepath.Dir(file), 0o700); err != nil {
		t.Fatal(err)
	}
	put := func(path, tok string, mode os.FileMode) {
		t.Helper()
		_ = os.Chmod(path, 0o600)
		if err := os.WriteFile(path, []byte(tok+"\n"), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(path, mode); err != nil {
			t.Fatal(err)
		}
	}
	check := func(wantTook bool, want string) {
		t.Helper()
		took, err := TakeSeed(seed, file)
		if err != nil {
			t.Fatal(err)
		}
		got, err := ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		if took != wantTook || got != want {
			t.Fatalf("TakeSeed: took %v, file holds %q; want %v, %q", took, got, wantTook, want)
		}
	}
	put(seed, "glpat-first", 0o400)
	check(true, "glpat-first")
	check(false, "glpat-first")
	// The daemon rotated: the file holds the successor, the source the old token.
	if err := writeFile(file, "glpat-rotated"); err != nil {
		t.Fatal(err)
	}
	check(false, "glpat-rotated")
	// The operator installed a new token at the source.
	put(seed, "glpat-new", 0o400)
	check(true, "glpat-new")
	// A source others can read is refused, and the file stays.
	put(seed, "glpat-other", 0o644)
	if _, err := TakeSeed(seed, file); err == nil || !strings.Contains(err.Error(), "0644") {
		t.Fatalf("TakeSeed of a 0644 source: %v", err)
	}
	if got, _ := ReadFile(file); got != "glpat-new" {
		t.Fatalf("file after a refused source: %q", got)
	}
}

// TestPermissionErrorNamesTheUser: with DynamicUser= the daemon's user is one
// nobody created, so a permission error says who the daemon is.
func TestPermissionErrorNamesTheUser(t *testing.T) {
	err := WithUser(&fs.PathError{Op: "open", Path: "/etc/gltoken/gitlab-token", Err: syscall.EACCES})
	if !strings.Contains(err.Error(), "permission denied (the daemon runs as ") || !strings.Contains(err.Error(), "uid ") {
		t.Fatalf("WithUser: %v", err)
	}
	if other := WithUser(fs.ErrNotExist); other != fs.ErrNotExist {
		t.Fatalf("WithUser changed a non-permission error: %v", other)
	}
}
