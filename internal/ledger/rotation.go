package ledger

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"
)

// Rotation is one self-rotation of a service account token, keyed by the
// SHA-256 of the token it replaces. Replicas that share a store claim the
// rotation here so exactly one of them asks GitLab, and pick the successor up
// from here when another one did. It never holds a secret in the clear:
// Sealed is the successor sealed (AES-GCM) under a key derived from the token
// it replaces, which only a holder of that token can open.
type Rotation struct {
	OldSHA256 string    // hex SHA-256 of the token being replaced (the key)
	Holder    string    // the replica that claimed it
	ClaimedAt time.Time // when the claim was made or last taken over
	NewSHA256 string    // hex SHA-256 of the successor; "" until completed
	Sealed    []byte    // the successor, sealed; nil until completed
	DoneAt    time.Time // zero until completed
}

// Done reports whether the rotation completed (its successor is published).
func (r Rotation) Done() bool { return r.NewSHA256 != "" }

// RotationStore coordinates service token rotation among replicas. Both stores
// implement it next to Store; ledgertest.RunRotations checks the contract:
//   - fingerprints are 64 hex digits (stored lowercase), holders non-empty, times
//     UTC; bad input is an error that changes nothing;
//   - a completed rotation never changes again.
type RotationStore interface {
	// ClaimRotation claims the rotation of oldSHA256 for holder at now. With no
	// row yet it inserts one and reports true. On an existing row it reports
	// true when holder already holds it (not done), or when the claim is
	// another holder's, not done, and older than staleBefore (a non-zero
	// staleBefore takes such a claim over: holder and ClaimedAt change). It
	// always returns the row in force after the call.
	ClaimRotation(ctx context.Context, oldSHA256, holder string, now, staleBefore time.Time) (Rotation, bool, error)
	// CompleteRotation publishes the successor of a rotation holder holds.
	// ErrConflict when holder does not hold it or it is done already with
	// another successor (completing again with the same one is a no-op);
	// ErrNotFound when there is no such rotation.
	CompleteRotation(ctx context.Context, oldSHA256, holder, newSHA256 string, sealed []byte, at time.Time) error
	// ReleaseRotation drops holder's claim on a rotation that did not happen
	// (GitLab refused it), so it may be claimed again. A no-op when holder
	// does not hold it or it is done.
	ReleaseRotation(ctx context.Context, oldSHA256, holder string) error
	// GetRotation returns the rotation of oldSHA256, or ErrNotFound.
	GetRotation(ctx context.Context, oldSHA256 string) (Rotation, error)
}

// CheckRotationKey returns oldSHA256 lower-cased and checks holder, or says
// why a store refuses them.
func CheckRotationKey(oldSHA256, holder string) (string, error) {
	sha, err := CheckFingerprint(oldSHA256)
	if err != nil {
		return "", fmt.Errorf("rotation: %w", err)
	}
	if holder == "" || len(holder) > 256 || !utf8.ValidString(holder) || strings.ContainsRune(holder, 0) {
		return "", errors.New("rotation: the holder must be 1 to 256 bytes of UTF-8 without NUL")
	}
	return sha, nil
}

// CheckRotationResult returns newSHA256 lower-cased, or why a store refuses
// the completion.
func CheckRotationResult(oldSHA256, newSHA256 string, sealed []byte, at time.Time) (string, error) {
	sha, err := CheckFingerprint(newSHA256)
	if err != nil {
		return "", fmt.Errorf("rotation successor: %w", err)
	}
	if sha == strings.ToLower(oldSHA256) {
		return "", errors.New("rotation successor: the same token as the one it replaces")
	}
	if len(sealed) == 0 || len(sealed) > MaxSealedLen {
		return "", fmt.Errorf("rotation successor: the sealed secret must be 1 to %d bytes", MaxSealedLen)
	}
	if at.IsZero() {
		return "", errors.New("rotation successor: no completion time")
	}
	return sha, nil
}
