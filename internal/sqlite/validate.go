package sqlite

// This file is kept identical (but for the package clause) in
// internal/postgres: the ledger.Store contract's input rules.

import (
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"gltoken.dev/gltoken/internal/ledger"
)

// maxErrorLen is the most bytes of LastError a store keeps.
const maxErrorLen = 1024

// checkIntent returns r as CreateIntent stores it, or why it refuses it.
func checkIntent(r ledger.Record) (ledger.Record, error) {
	if r.ID == "" {
		return r, errors.New("record has no id")
	}
	if r.State != "" && r.State != ledger.Pending {
		return r, fmt.Errorf("record %s: an intent must be pending, not %q", r.ID, r.State)
	}
	r.State = ledger.Pending
	if !validKind(r.Kind) {
		return r, fmt.Errorf("record %s: unknown kind %q", r.ID, r.Kind)
	}
	if r.CreatedAt.IsZero() {
		return r, fmt.Errorf("record %s: no creation time", r.ID)
	}
	if r.NextAttemptAt.IsZero() {
		// A record that is never due is never reaped.
		return r, fmt.Errorf("record %s: no next attempt time (end of the mint lease)", r.ID)
	}
	if r.Attempts < 0 {
		return r, fmt.Errorf("record %s: negative attempts", r.ID)
	}
	if r.SecretSHA256 != "" {
		sha, err := checkFingerprint(r.SecretSHA256)
		if err != nil {
			return r, fmt.Errorf("record %s: %w", r.ID, err)
		}
		r.SecretSHA256 = sha
	}
	r.LastError = cleanError(r.LastError)
	return r, nil
}

func validKind(k ledger.Kind) bool {
	switch k {
	case ledger.ProjectDeployToken, ledger.GroupDeployToken, ledger.ProjectAccessToken, ledger.GroupAccessToken:
		return true
	}
	return false
}

// checkFingerprint returns sha lower-cased if it is a hex SHA-256. The check
// is what keeps a raw token out of the ledger; the error does not quote it.
func checkFingerprint(sha string) (string, error) {
	if len(sha) != 64 {
		return "", fmt.Errorf("secret fingerprint is %d characters, want a 64-digit hex SHA-256", len(sha))
	}
	for i := 0; i < len(sha); i++ {
		c := sha[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
			return "", errors.New("secret fingerprint is not a hex SHA-256")
		}
	}
	return strings.ToLower(sha), nil
}

// lookupFingerprint is checkFingerprint for lookups: anything that is not a
// fingerprint matches nothing.
func lookupFingerprint(sha string) (string, bool) {
	s, err := checkFingerprint(sha)
	return s, err == nil
}

// cleanError makes s storable: valid UTF-8, no NUL bytes, at most
// maxErrorLen bytes cut at a character boundary.
func cleanError(s string) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	s = strings.ReplaceAll(s, "\x00", "\uFFFD")
	if len(s) <= maxErrorLen {
		return s
	}
	cut := maxErrorLen
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut]
}

func checkClaim(lease time.Duration, limit int) error {
	if limit <= 0 {
		return fmt.Errorf("claim limit %d, want > 0", limit)
	}
	if lease <= 0 {
		return fmt.Errorf("claim lease %s, want > 0", lease)
	}
	return nil
}
