package ledger

import (
	"context"
	"strings"
	"time"
)

// SlotIDPrefix starts the id of every pool slot's record (and no other
// record's id). A slot's record outlives the jobs that hold it: its secret
// ends by rotation at its TTL, not when its holders' jobs end, so the
// stores never treat a slot as let go (see Store).
const SlotIDPrefix = "pool-"

// IsSlotID reports whether id names a pool slot's record.
func IsSlotID(id string) bool { return strings.HasPrefix(id, SlotIDPrefix) }

// SlotStore is implemented next to Store by the stores that can keep a pool
// slot: one Active record for one GitLab access token (one bot user) that is
// renewed with GitLab's rotate API instead of being revoked, so its GitLab id
// and secret change while the record stays. Both stores implement it;
// ledgertest.RunSlots checks the contract.
type SlotStore interface {
	// Rotated records that the Active record id's token fromGitLabID was
	// rotated into toGitLabID: GitLabID = toGitLabID, SecretSHA256 =
	// secretSHA256 ("" when the rotate's answer was lost and the secret is
	// known to nobody, else 64 hex digits, kept lowercase), ExpiresAt and
	// NextAttemptAt = expiresAt (not zero), Attempts 0, LastError "" and no
	// sealed secret (the old one is dead). ErrConflict when the record is not
	// Active or its GitLabID is not fromGitLabID (another rotation won);
	// ErrNotFound when there is none.
	Rotated(ctx context.Context, id string, fromGitLabID, toGitLabID int64, secretSHA256 string, expiresAt time.Time) error
}

// SlotLocker is implemented by the stores several processes share
// (PostgreSQL): LockSlots holds a lock on the slots of one pool, named by
// key, across every process on the database until unlock is called (or the
// process or its connection dies), so that one replica at a time decides
// about a pool's slots: hands an idle one out, creates a new one, rotates
// one at its TTL. Without it two replicas could rotate one slot at once
// (one rotation wins, the other's job gets nothing) or both count a free
// slot and create it. Locks of different keys do not exclude each other.
// An error (ctx ended, the database unreachable) leaves nothing locked.
type SlotLocker interface {
	LockSlots(ctx context.Context, key string) (unlock func(), err error)
}
