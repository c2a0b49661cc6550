package ledger

// The Store contract's input rules, shared by every store implementation.

import (
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"
)

// MaxErrorLen is the most bytes of LastError (or an Abandon reason) a store keeps.
const MaxErrorLen = 1024

// CheckIntent returns r as CreateIntent stores it, or why a store refuses it.
func CheckIntent(r Record) (Record, error) {
	if r.ID == "" {
		return r, errors.New("record has no id")
	}
	if r.State != "" && r.State != Pending {
		return r, fmt.Errorf("record %s: an intent must be pending, not %q", r.ID, r.State)
	}
	r.State = Pending
	if !r.Kind.Valid() {
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
		sha, err := CheckFingerprint(r.SecretSHA256)
		if err != nil {
			return r, fmt.Errorf("record %s: %w", r.ID, err)
		}
		r.SecretSHA256 = sha
	}
	if r.SecretKeyID != "" || len(r.SealedSecret) != 0 {
		return r, fmt.Errorf("record %s: an intent has no secret to seal", r.ID)
	}
	r.SealedSecret = nil
	r.LastError = CleanError(r.LastError)
	return r, nil
}

// FirstHolder returns the hold CreateIntent records with r, if any.
func FirstHolder(r Record) (Holder, bool) {
	if r.JobID == "" || r.TokenExpiresAt.IsZero() {
		return Holder{}, false
	}
	return Holder{LedgerID: r.ID, JobID: r.JobID, ProjectID: r.ProjectID, PipelineID: r.PipelineID,
		TokenExpiresAt: r.TokenExpiresAt, HeldSince: r.CreatedAt}, true
}

// CheckHolder validates AddHolder's argument.
func CheckHolder(h Holder) error {
	switch {
	case h.LedgerID == "":
		return errors.New("holder has no ledger id")
	case h.JobID == "":
		return fmt.Errorf("holder of %s has no job id", h.LedgerID)
	case h.TokenExpiresAt.IsZero():
		return fmt.Errorf("holder %s of %s: no ID-token expiry", h.JobID, h.LedgerID)
	case h.HeldSince.IsZero():
		return fmt.Errorf("holder %s of %s: no time of the hold", h.JobID, h.LedgerID)
	case !h.ReleasedAt.IsZero():
		return fmt.Errorf("holder %s of %s: a new hold cannot be let go already", h.JobID, h.LedgerID)
	}
	return nil
}

// CheckRotated validates Rotated's arguments and returns the secret's
// fingerprint normalised ("" when nobody knows the secret).
func CheckRotated(id string, fromGitLabID, toGitLabID int64, secretSHA256 string, expiresAt time.Time) (string, error) {
	sha := ""
	if secretSHA256 != "" {
		var err error
		if sha, err = CheckFingerprint(secretSHA256); err != nil {
			return "", err
		}
	}
	switch {
	case id == "":
		return "", errors.New("empty id")
	case expiresAt.IsZero():
		return "", errors.New("no expiry, so it would never be renewed")
	case fromGitLabID <= 0 || toGitLabID <= 0:
		return "", errors.New("GitLab ids must be positive")
	}
	return sha, nil
}

// CheckSeal validates SealSecret's arguments.
func CheckSeal(keyID string, sealed []byte) error {
	switch {
	case keyID == "":
		return errors.New("sealed secret without a key id")
	case len(sealed) == 0:
		return errors.New("empty sealed secret")
	case len(sealed) > MaxSealedLen:
		return fmt.Errorf("sealed secret of %d bytes, at most %d", len(sealed), MaxSealedLen)
	}
	return nil
}

// CheckReusable validates Reusable's arguments.
func CheckReusable(key string, limit int) error {
	if key == "" {
		return errors.New("no reuse key")
	}
	if limit <= 0 {
		return fmt.Errorf("limit %d, want > 0", limit)
	}
	return nil
}

// CheckFingerprint returns sha lower-cased if it is a hex SHA-256. The check
// is what keeps a raw token out of the ledger; the error does not quote it.
func CheckFingerprint(sha string) (string, error) {
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

// LookupFingerprint is CheckFingerprint for lookups: anything that is not a
// fingerprint matches nothing.
func LookupFingerprint(sha string) (string, bool) {
	s, err := CheckFingerprint(sha)
	return s, err == nil
}

// CleanError makes s storable: valid UTF-8, no NUL bytes, at most
// MaxErrorLen bytes cut at a character boundary.
func CleanError(s string) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	s = strings.ReplaceAll(s, "\x00", "\uFFFD")
	if len(s) <= MaxErrorLen {
		return s
	}
	cut := MaxErrorLen
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut]
}

// CheckClaim validates ClaimDue's arguments.
func CheckClaim(lease time.Duration, limit int) error {
	if limit <= 0 {
		return fmt.Errorf("claim limit %d, want > 0", limit)
	}
	if lease <= 0 {
		return fmt.Errorf("claim lease %s, want > 0", lease)
	}
	return nil
}
