// Package fingerprint names a secret without revealing it. A secret — an
// access token, an ID token, a service token — may appear in logs, audit
// events and the ledger only as its fingerprint: the hex SHA-256 of its bytes.
// This package is the one home of that rule.
package fingerprint

import (
	"crypto/sha256"
	"encoding/hex"
)

// Of returns the fingerprint of secret: its SHA-256 as 64 lower-case hex digits,
// the form that logs, audit events and the ledger carry.
func Of(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:])
}

// Short returns "sha256:" and the first 16 hex digits of Of(secret): enough to
// recognise a secret in a trace a person reads, too short to be a stand-in for it.
func Short(secret string) string {
	return "sha256:" + Of(secret)[:16]
}
