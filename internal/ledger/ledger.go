// Package ledger defines the durable record of every credential the daemon mints
// and the Store interface that the embedded (SQLite) and central (PostgreSQL)
// stores implement. The exchange service writes an intent before it asks GitLab
// for a credential and the result after; the reaper claims due records and
// revokes them. Package ledgertest holds the contract suite every Store passes.
package ledger

import (
	"context"
	"errors"
	"time"
)

// State is where a record is in its life.
type State string

const (
	// Pending: the intent is written, the mint may or may not have reached GitLab.
	Pending State = "pending"
	// Active: GitLab returned the credential; it must be revoked at RevokeAt.
	Active State = "active"
	// Revoked: the credential is gone from GitLab (revoked, deleted, or found absent).
	Revoked State = "revoked"
	// Abandoned: an intent that never produced a credential (GitLab refused, or
	// reconciliation found no token of that name).
	Abandoned State = "abandoned"
)

// Kind is the kind of GitLab credential.
type Kind string

const (
	ProjectDeployToken Kind = "project_deploy_token"
	GroupDeployToken   Kind = "group_deploy_token"
	ProjectAccessToken Kind = "project_access_token"
	GroupAccessToken   Kind = "group_access_token"
)

// Valid reports whether k is one of the four kinds above.
func (k Kind) Valid() bool { return k.AccessToken() || k.DeployToken() }

// AccessToken reports whether k is a project or group access token (a bot
// user with a role; it can be rotated and listed by name).
func (k Kind) AccessToken() bool { return k == ProjectAccessToken || k == GroupAccessToken }

// DeployToken reports whether k is a project or group deploy token (no role).
func (k Kind) DeployToken() bool { return k == ProjectDeployToken || k == GroupDeployToken }

// Record is one credential the daemon minted or meant to mint. It never holds
// the secret in the clear: SecretSHA256 is the hex SHA-256 of it, and
// SealedSecret, when the daemon has a ledger key, is it encrypted.
type Record struct {
	ID    string // ledger id; the GitLab token is named "gltoken-" + ID
	State State
	Kind  Kind
	// Owner is where the token lives in GitLab: the id of the project
	// (project kinds) or group (group kinds). It is 0 only in records written
	// before the ledger kept ids (their OwnerPath names the owner).
	Owner int64
	// OwnerPath is the human path of the owner (group/project), for audit and search.
	OwnerPath string
	Scopes    []string
	Resource  string // what the client asked for (URL)
	Rule      string // policy rule that allowed it
	// Requester facts from the ID token, for audit. ProjectID is the
	// project the job runs in (job_project_id, else project_id): where
	// GitLab's jobs API finds the job.
	Subject    string
	ProjectID  string
	PipelineID string
	JobID      string
	TokenJTI   string
	// TokenExpiresAt is the exp of the requester's ID token. With it,
	// CreateIntent records the requesting job (JobID) as the credential's
	// first holder.
	TokenExpiresAt time.Time
	// ReuseKey names the grant this credential serves (source project, rule,
	// target, kind, scopes, role), as the exchange computes it; another job
	// asking for the same grant may be handed this credential (see
	// Store.Reusable). "" for a credential no other job may share.
	ReuseKey string

	GitLabID     int64  // the token's id in GitLab, 0 until Active
	Username     string // git/registry username of the credential
	SecretSHA256 string // hex SHA-256 of the secret, "" until Active
	// SealedSecret is the secret encrypted under the ledger key SecretKeyID
	// (see Store.SealSecret); both are empty when the daemon keeps secrets
	// in memory only, and cleared when the record is revoked.
	SecretKeyID  string
	SealedSecret []byte

	CreatedAt time.Time
	ExpiresAt time.Time // when the credential stops being valid for its user (the TTL)
	// NextAttemptAt is when the reaper may take the record up: RevokeAt for Active
	// records, the end of the mint's lease for Pending ones; pushed back after a
	// failed attempt and while a reaper holds a claim.
	NextAttemptAt time.Time
	Attempts      int
	LastError     string // never contains a secret
	RevokedAt     time.Time
}

// Holder is one job holding a credential. With reuse, several jobs of one
// project share a credential; job-end revocation ends a credential once no
// job holds it any more. A hold is let go at most once and never taken up
// again.
type Holder struct {
	LedgerID   string
	JobID      string
	ProjectID  string
	PipelineID string
	// TokenExpiresAt is the exp of the job's ID token: the exchange hands a
	// job only credentials that expire no later.
	TokenExpiresAt time.Time
	HeldSince      time.Time // when the job got the credential
	ReleasedAt     time.Time // when it let go (its job ended); zero while it holds it
}

// Holding reports whether the job still holds the credential.
func (h Holder) Holding() bool { return h.ReleasedAt.IsZero() }

// MaxSealedLen is the largest sealed secret a store keeps.
const MaxSealedLen = 4096

// OwnerRef names a project or group the daemon minted a kind of credential on.
type OwnerRef struct {
	Kind  Kind
	Owner int64 // as in Record.Owner
}

// ErrNotFound: no record with that id (or fingerprint).
var ErrNotFound = errors.New("ledger: record not found")

// ErrConflict: the record is not in the state the transition requires
// (e.g. Activate on a record the reaper already abandoned).
var ErrConflict = errors.New("ledger: record not in expected state")

// ErrExists: a record with that id already exists.
var ErrExists = errors.New("ledger: record already exists")

// Store persists records. Every method is safe for concurrent use, and for use
// by several processes sharing one database (PostgreSQL replicas).
//
// The contract, which package ledgertest checks for every implementation:
//   - Times are stored in UTC at microsecond precision (at least millisecond)
//     and come back in time.UTC; a zero time stays zero.
//   - Scopes round-trip as a list, order kept; an empty list comes back empty.
//   - SecretSHA256 is the only trace of a secret: stores refuse anything that
//     is not 64 hex digits (so a raw token can never be stored by mistake) and
//     keep it lowercase.
//   - LastError and Abandon reasons are stored as valid UTF-8 without NUL
//     bytes, cut to at most 1024 bytes.
//   - Input a method refuses (empty id, zero times that would keep a record
//     from ever being reaped, a bad fingerprint, limit or lease <= 0) is an
//     error that changes nothing.
//   - Transitions only go forward: Pending -> Active -> Revoked,
//     Pending -> Revoked, Pending -> Abandoned.
//   - A credential's holders: a record is "let go" when it has holders and
//     none of them holds it any more. A let-go record takes no new holder
//     and is never reusable, so a credential job-end revocation is about to
//     end is not handed to another job meanwhile.
//     A pool slot's record (IsSlotID) is never let go: the slot stays and
//     its secret rotates at its TTL, so it takes new holders after every
//     earlier one let go, and ReleaseJob never returns it.
//   - A sealed secret is kept only while the record is Active.
type Store interface {
	// CreateIntent inserts a Pending record with every field as given (State
	// must be Pending or empty; SecretKeyID and SealedSecret must be empty).
	// NextAttemptAt is the end of the mint's lease: after it, a reaper may
	// reconcile the intent. ID, a known Kind, CreatedAt and NextAttemptAt are
	// required. When JobID and TokenExpiresAt are set, the same step records
	// the job as the first holder (ProjectID, PipelineID, TokenExpiresAt,
	// held since CreatedAt; see FirstHolder). ErrExists if the id is taken.
	CreateIntent(ctx context.Context, r Record) error
	// Activate moves a Pending record to Active with what GitLab returned.
	// ExpiresAt and NextAttemptAt both become expiresAt (the revocation time,
	// which must not be zero); Attempts and LastError are kept. ErrConflict if
	// the record is not Pending any more (the caller then revokes the credential
	// itself); ErrNotFound if there is none.
	Activate(ctx context.Context, id string, gitlabID int64, username, secretSHA256 string, expiresAt time.Time) error
	// Abandon moves a Pending record to Abandoned (nothing exists in GitLab),
	// with reason as LastError. Idempotent on Abandoned (the first reason
	// stays); ErrConflict from Active or Revoked; ErrNotFound if there is none.
	Abandon(ctx context.Context, id, reason string) error
	// MarkRevoked moves a Pending or Active record to Revoked with RevokedAt =
	// at, and drops its sealed secret. Idempotent on Revoked (the first
	// RevokedAt stays); ErrConflict from Abandoned; ErrNotFound if there is
	// none.
	MarkRevoked(ctx context.Context, id string, at time.Time) error
	// SealSecret keeps the secret of an Active record, encrypted under the
	// ledger key keyID (both non-empty, sealed at most MaxSealedLen bytes),
	// replacing any sealed before (a rotated secret, or a new key).
	// ErrConflict if the record is not Active; ErrNotFound if there is none.
	SealSecret(ctx context.Context, id, keyID string, sealed []byte) error
	// Reusable returns at most limit Active records with ReuseKey key (not
	// "") that carry a sealed secret, expire after liveAfter and no later
	// than notAfter, and are not let go: the credentials a job whose ID
	// token expires at notAfter may be handed. Latest expiry first, then by
	// ID. limit must be positive.
	Reusable(ctx context.Context, key string, liveAfter, notAfter time.Time, limit int) ([]Record, error)
	// AddHolder records that job h.JobID holds credential h.LedgerID since
	// h.HeldSince (LedgerID, JobID, TokenExpiresAt and HeldSince required).
	// A no-op if the job holds it already (the first hold stays).
	// ErrConflict if the record is Revoked or Abandoned, is let go (never a
	// pool slot's), or the job held it and let go; ErrNotFound if there is
	// no record.
	AddHolder(ctx context.Context, h Holder) error
	// Holders lists every holder of a credential, past and present, oldest
	// hold first (then by JobID). None for an unknown record.
	Holders(ctx context.Context, ledgerID string) ([]Holder, error)
	// Holds lists the holds job jobID has on credentials that are still
	// Pending or Active, oldest first (then by LedgerID).
	Holds(ctx context.Context, jobID string) ([]Holder, error)
	// LiveHolds returns at most limit holds not let go on Pending or Active
	// records, by JobID then LedgerID: the running jobs that hold live
	// credentials, which job-end revocation watches. limit must be positive.
	LiveHolds(ctx context.Context, limit int) ([]Holder, error)
	// ReleaseJob lets go of every hold of job jobID (ReleasedAt = at, not
	// zero) and returns the ids of the Pending or Active records that no job
	// holds any more (sorted; never a pool slot's), which job-end revocation
	// then ends. Holds already let go keep their first ReleasedAt.
	// Releasing a job twice, or one that holds nothing, returns nothing.
	ReleaseJob(ctx context.Context, jobID string, at time.Time) ([]string, error)
	// ClaimDue returns at most limit records that are Pending or Active with
	// NextAttemptAt <= now, oldest first (by NextAttemptAt, then ID), and
	// atomically pushes their NextAttemptAt to now+lease so no other reaper
	// (goroutine, Store instance or replica) takes them until the lease ends.
	// The records come back with the new NextAttemptAt. limit and lease must
	// be positive.
	ClaimDue(ctx context.Context, now time.Time, lease time.Duration, limit int) ([]Record, error)
	// RetryLater records a failed attempt on a Pending or Active record:
	// Attempts+1, LastError, NextAttemptAt = next (not zero). ErrConflict on
	// Revoked or Abandoned; ErrNotFound if there is none.
	RetryLater(ctx context.Context, id string, next time.Time, lastErr string) error
	// Get returns the record with that id, or ErrNotFound.
	Get(ctx context.Context, id string) (Record, error)
	// FindBySecret returns the record whose SecretSHA256 matches (hex, either
	// case), in whatever state, or ErrNotFound (always for "").
	FindBySecret(ctx context.Context, secretSHA256 string) (Record, error)
	// ReleaseClaims makes every Active record whose NextAttemptAt lies past
	// its ExpiresAt (claimed by a reaper, or backed off after a failure) due
	// at ExpiresAt again, and reports how many. For start-up of a store one
	// process owns: claims of a process that died must not delay revocation.
	ReleaseClaims(ctx context.Context) (int, error)
	// ListPending lists every Pending record, oldest CreatedAt first (for
	// start-up reconciliation).
	ListPending(ctx context.Context) ([]Record, error)
	// CountActive counts Active records (the live-tokens gauge).
	CountActive(ctx context.Context) (int, error)
	// NextDue returns the earliest NextAttemptAt of a Pending or Active
	// record (ok false when there is none): when a reaper must look next.
	NextDue(ctx context.Context) (next time.Time, ok bool, err error)
	// CountOverdue counts Pending and Active records whose ExpiresAt is
	// before before: credentials past their TTL that are not known to be
	// gone from GitLab (the backstop alert's gauge).
	CountOverdue(ctx context.Context, before time.Time) (int, error)
	// Owners lists, once each and in no particular order, the (Kind, Owner)
	// pairs of the records of those kinds created at or after since: where
	// the daemon minted, for the sweep that looks for escaped tokens. Records
	// from before the ledger kept ids (Owner 0) are left out.
	Owners(ctx context.Context, kinds []Kind, since time.Time) ([]OwnerRef, error)
	// Ping checks the store is reachable (readiness).
	Ping(ctx context.Context) error
	// Close releases the store; later calls fail. Calling it again is a no-op.
	Close() error
}
