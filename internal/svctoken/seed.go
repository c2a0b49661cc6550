package svctoken

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"strings"

	"gltoken.dev/gltoken/internal/fingerprint"
)

// TakeSeed installs the token of seed (a read-only source such as systemd's
// $CREDENTIALS_DIRECTORY/gitlab-token, from LoadCredential=) into file, the
// writable token file the Keeper reads and rotates, when seed holds a token
// not taken before: file does not exist yet, or an operator installed a new
// token at the source. Otherwise file stays, since it may hold a successor
// the daemon rotated to (the source still holds the token GitLab revoked at
// that rotation). It records the SHA-256 of the seed it took in file+".seed"
// and reports whether it took it. The secret is never logged or echoed.
func TakeSeed(seed, file string) (bool, error) {
	tok, err := ReadFile(seed)
	if err != nil {
		return false, err
	}
	mark := file + ".seed"
	sum := fingerprint.Of(tok)
	prev, err := os.ReadFile(mark)
	switch {
	case err == nil && strings.TrimSpace(string(prev)) == sum:
		if _, err := os.Stat(file); err == nil {
			return false, nil // taken before; file holds it or its successor
		}
	case err != nil && !errors.Is(err, fs.ErrNotExist):
		return false, fmt.Errorf("service token: read %s: %w", mark, WithUser(err))
	}
	if err := writeFile(file, tok); err != nil {
		return false, err
	}
	w, err := prepareWrite(mark)
	if err != nil {
		return false, err
	}
	if err := w.commit(sum); err != nil {
		return false, err
	}
	return true, nil
}

// WithUser adds, to a permission error, the user the daemon runs as: with
// systemd's DynamicUser= that is a user the operator never created.
func WithUser(err error) error {
	if err == nil || !errors.Is(err, fs.ErrPermission) {
		return err
	}
	return fmt.Errorf("%w (the daemon runs as %s)", err, RunAs())
}

// RunAs names the process's user: "user gltoken (uid 61234, gid 61234)".
func RunAs() string {
	uid, gid := os.Getuid(), os.Getgid()
	if u, err := user.LookupId(fmt.Sprint(uid)); err == nil {
		return fmt.Sprintf("user %s (uid %d, gid %d)", u.Username, uid, gid)
	}
	return fmt.Sprintf("uid %d (gid %d)", uid, gid)
}
