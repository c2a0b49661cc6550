package svctoken

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// maxTokenLen bounds what a token file may hold.
const maxTokenLen = 1024

// ReadFile reads a service account token from path. It refuses a file whose
// mode lets anyone but its owner read or write it (0600 or stricter is
// required: the daemon rewrites the file when it rotates the token), and never
// echoes the content in an error.
func ReadFile(path string) (string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("service token file: %w", WithUser(err))
	}
	if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("service token file %s: not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return "", fmt.Errorf("service token file %s: mode %04o gives others than its owner access to the token; it must be 0600 or stricter (chmod 600 %s)", path, perm, path)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("service token file: %w", WithUser(err))
	}
	tok := strings.TrimSpace(string(data))
	if tok == "" {
		return "", fmt.Errorf("service token file %s: empty", path)
	}
	if strings.ContainsAny(tok, "\r\n\t \x00") || len(tok) > maxTokenLen {
		return "", fmt.Errorf("service token file %s: does not hold a single token", path)
	}
	return tok, nil
}

// pendingWrite is the replacement of a token file, prepared before GitLab is
// asked for the new token: a temporary file in the same directory (so the
// rename is atomic), created with mode 0600.
type pendingWrite struct {
	f    *os.File
	path string
}

// prepareWrite creates the temporary file that will replace path. Failing
// here is failing before anything happened at GitLab.
func prepareWrite(path string) (*pendingWrite, error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".new-*")
	if err != nil {
		return nil, fmt.Errorf("prepare the new token file next to %s: %w", path, WithUser(err))
	}
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		os.Remove(f.Name())
		return nil, fmt.Errorf("prepare the new token file next to %s: %w", path, err)
	}
	return &pendingWrite{f: f, path: path}, nil
}

// commit writes secret, syncs it, renames it over the token file and syncs the
// directory, so after a crash the file holds either the old or the new token,
// whole.
func (w *pendingWrite) commit(secret string) error {
	name := w.f.Name()
	_, err := w.f.WriteString(secret + "\n")
	if err == nil {
		err = w.f.Sync()
	}
	if cerr := w.f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(name, w.path)
	}
	if err != nil {
		os.Remove(name)
		return fmt.Errorf("write the new token to %s: %w", w.path, err)
	}
	if err := syncDir(filepath.Dir(w.path)); err != nil {
		return fmt.Errorf("write the new token to %s: sync the directory: %w", w.path, err)
	}
	return nil
}

// abort removes the temporary file.
func (w *pendingWrite) abort() {
	w.f.Close()
	os.Remove(w.f.Name())
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, os.ErrInvalid) {
		return err
	}
	return nil
}

// writeFile replaces path with secret atomically.
func writeFile(path, secret string) error {
	w, err := prepareWrite(path)
	if err != nil {
		return err
	}
	return w.commit(secret)
}
