package exchange

import (
	"context"
	"errors"
	"time"

	"gltoken.dev/gltoken/internal/idtoken"
	"gltoken.dev/gltoken/internal/ledger"
)

// The ports: what the exchange needs from the outside, declared here and
// implemented by the adapters (idtoken, internal/gitlab, metrics).

// Verifier checks a presented ID token; *idtoken.Verifier implements it.
type Verifier interface {
	Verify(ctx context.Context, raw string) (*idtoken.Token, error)
}

// Observer receives the service's measurements; the metrics adapter implements it.
type Observer interface {
	Exchanged(outcome Outcome, kind ledger.Kind, d time.Duration)
	Minted(kind ledger.Kind)
	Revoked(kind ledger.Kind, outcome Outcome)
}

type nopObserver struct{}

func (nopObserver) Exchanged(Outcome, ledger.Kind, time.Duration) {}
func (nopObserver) Minted(ledger.Kind)                            {}
func (nopObserver) Revoked(ledger.Kind, Outcome)                  {}

// Minter is the GitLab side of the exchange: the internal/gitlab adapter implements it.
type Minter interface {
	// ResolveOwner returns the GitLab id of the project (project kinds) or
	// group (group kinds) whose full path is exactly path. GitLab also finds
	// a project by an old path (after a rename or transfer) and ignores
	// case: such a match MUST be refused with ErrNotFound, since the policy
	// decided on path, not on whatever GitLab redirects it to. It must not
	// answer from a cache that could be stale.
	ResolveOwner(ctx context.Context, kind ledger.Kind, path string) (id int64, err error)
	// Mint creates the credential. It MUST NOT retry a create on its own: when
	// GitLab's answer is lost or ambiguous it returns an error wrapping
	// ErrAmbiguous, and the caller reconciles with FindByName.
	Mint(ctx context.Context, req MintRequest) (Credential, error)
	// FindByName looks for an active token of that kind and name on the
	// project or group with GitLab id owner. ok is false when there is none.
	FindByName(ctx context.Context, kind ledger.Kind, owner int64, name string) (ref TokenRef, ok bool, err error)
	// Revoke deletes (deploy tokens) or revokes (access tokens) the token.
	// A token that is already gone is not an error.
	Revoke(ctx context.Context, ref TokenRef) error
}

// MintRequest asks GitLab for one credential.
type MintRequest struct {
	// Name is the token's name in GitLab: "gltoken-" + the ledger id. It is how
	// an ambiguous create is reconciled, so it must be unique.
	Name string
	Kind ledger.Kind
	// Owner is the GitLab id of the project (project kinds) or the group
	// (group kinds), as ResolveOwner returned it.
	Owner int64
	// OwnerPath is the owner's full path, for messages and logs only.
	OwnerPath   string
	Scopes      []string
	ExpiresAt   time.Time // exact; access tokens get the date GitLab allows as a backstop
	AccessLevel int       // project/group access tokens only
}

// Credential is what GitLab returned. Secret is the only place the secret
// lives; it is never logged or persisted.
type Credential struct {
	Kind      ledger.Kind
	Owner     int64 // GitLab id of the project/group
	OwnerPath string
	GitLabID  int64
	Name      string
	Username  string
	Secret    string
	ExpiresAt time.Time
}

// TokenRef names a credential in GitLab, for revocation and reconciliation.
type TokenRef struct {
	Kind     ledger.Kind
	Owner    int64 // GitLab id of the project/group
	GitLabID int64
	// Name is the token's GitLab name ("gltoken-" + ledger id), when known:
	// a FamilyRevoker ends every active token of that name (a self-rotated
	// successor keeps it).
	Name string
}

// Errors the minter returns (wrapped, with detail) so the service can map them.
var (
	// ErrAmbiguous: the create may or may not have happened (timeout, lost
	// response, 5xx after sending). Reconcile by name; never create again blindly.
	ErrAmbiguous = errors.New("gitlab: create outcome unknown")
	// ErrUnavailable: GitLab could not be reached or answered 5xx before acting.
	ErrUnavailable = errors.New("gitlab: unavailable")
	// ErrRateLimited: GitLab answered 429; RetryAfterError carries the wait.
	ErrRateLimited = errors.New("gitlab: rate limited")
	// ErrBudgetSpent: the daemon's own GitLab API budget refused the call
	// before it was sent (errors wrapping it also wrap ErrRateLimited).
	ErrBudgetSpent = errors.New("gitlab: API budget spent")
	// ErrServiceTokenInvalid: GitLab answered 401 to the daemon's own token
	// (invalid, expired, revoked): an operator must install a valid one. It is
	// not a matter of the account's rights.
	ErrServiceTokenInvalid = errors.New("gitlab: the daemon's GitLab token is invalid")
	// ErrForbidden: GitLab answered 403: the service account lacks the rights.
	ErrForbidden = errors.New("gitlab: service account lacks permission")
	// ErrNotFound: the project or group does not exist (or the service account cannot see it).
	ErrNotFound = errors.New("gitlab: not found")
	// ErrRejected: GitLab refused the request as invalid (400/422).
	ErrRejected = errors.New("gitlab: request rejected")
)

// RetryAfterError carries GitLab's Retry-After alongside ErrRateLimited.
type RetryAfterError struct {
	After time.Duration
	Err   error
}

func (e *RetryAfterError) Error() string { return e.Err.Error() }
func (e *RetryAfterError) Unwrap() error { return e.Err }
