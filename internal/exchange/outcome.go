package exchange

import (
	"log/slog"

	"gltoken.dev/gltoken/internal/ledger"
)

// Outcome names what became of an exchange or a revocation. It is the
// "outcome" of the audit event and the outcome label of
// gltoken_exchanges_total and gltoken_revocations_total, and
// docs/reference.md lists every value: one name per thing everywhere.
//
// The set is closed. An Outcome's name is unexported, so no string (not even
// an untyped literal) can become one outside this file: a new outcome is a
// new value here, which the tests require docs/reference.md to name.
type Outcome struct{ name string }

// String is the outcome's name, as logged and as the metric label.
func (o Outcome) String() string { return o.name }

// LogValue makes slog print the name.
func (o Outcome) LogValue() slog.Value { return slog.StringValue(o.name) }

// Outcomes of an exchange (audit event "exchange", gltoken_exchanges_total):
// granted, denied by the trust policy, or the error code of any other
// refusal. A denial reaches the client as invalid_target (or invalid_scope
// when only the scopes were refused): the wire codes are RFC 6749's, the
// outcome says why.
var (
	OutcomeGranted        = Outcome{"granted"}
	OutcomeDenied         = Outcome{"denied"}
	OutcomeInvalidRequest = Outcome{CodeInvalidRequest}
	OutcomeInvalidGrant   = Outcome{CodeInvalidGrant}
	OutcomeInvalidTarget  = Outcome{CodeInvalidTarget} // not a repository of this GitLab, or not found there
	OutcomeInvalidScope   = Outcome{CodeInvalidScope}  // an unknown scope, or one that does not apply to the resource
	OutcomeRateLimited    = Outcome{CodeRateLimited}
	OutcomeUnavailable    = Outcome{CodeUnavailable} // GitLab or the ledger cannot be reached (also of a revocation)
	OutcomeServerError    = Outcome{CodeServerError}
)

// Outcomes of a revocation (audit events "revocation", "escaped credential
// revoked", "escaped credential found"; gltoken_revocations_total).
var (
	// Ended, and who or what ended it.
	OutcomeRevoked         = Outcome{"revoked"}          // by the reaper, at its TTL
	OutcomeClientRevoked   = Outcome{"client_revoked"}   // by its holder, RFC 7009 (POST /v1/revoke)
	OutcomeOperatorRevoked = Outcome{"operator_revoked"} // by an operator (exchanged credentials revoke)
	OutcomeJobEnded        = Outcome{"job_ended"}        // the last job holding it ended
	// An intent whose mint did not finish, settled.
	OutcomeReconciledRevoked = Outcome{"reconciled_revoked"} // its token was found by name and revoked
	OutcomeAbandoned         = Outcome{"abandoned"}          // it never became a token
	OutcomeAmbiguousMint     = Outcome{"ambiguous_mint"}     // made, its answer lost: found by name and revoked at once
	// Not (yet) confirmed.
	OutcomeExpiredUnconfirmed = Outcome{"expired_unconfirmed"} // the owner is out of sight, but the token is past its GitLab expiry
	OutcomeUnconfirmed        = Outcome{"unconfirmed"}         // GitLab answered 404 and the owner is out of sight: retried
	OutcomeFailed             = Outcome{"failed"}              // the revocation failed: retried with back-off
	OutcomeDeferred           = Outcome{"deferred"}            // a client's revocation failed: the reaper retries it at once
	// Tokens outside the ledger, found and revoked (successors a token
	// rotated itself into, or tokens the sweep found).
	OutcomeEscaped       = Outcome{"escaped"}
	OutcomeEscapedFailed = Outcome{"escaped_failed"} // the sweep found one and could not revoke it: tried again at the next sweep
	// Access-token pool slots: rotated rather than revoked.
	OutcomePoolRotated = Outcome{"pool_rotated"} // the secret is dead, the slot idle
	OutcomePoolAdopted = Outcome{"pool_adopted"} // a lost rotation's successor is the idle slot
	OutcomePoolGone    = Outcome{"pool_gone"}    // GitLab has no active token of the slot
	OutcomePoolRevoked = Outcome{"pool_revoked"} // it could not be rotated, so it was revoked
	// A client's revocation (POST /v1/revoke) of nothing live.
	OutcomeUnknownToken     = Outcome{"unknown_token"}
	OutcomeAlreadyRevoked   = Outcome{"already_revoked"}
	OutcomeAlreadyAbandoned = Outcome{"already_abandoned"}
)

// outcomePending is no outcome: an intent that has no token yet is looked
// at again later, and nothing is logged or counted.
var outcomePending = Outcome{"pending"}

// ExchangeOutcomes lists every outcome of an exchange.
func ExchangeOutcomes() []Outcome {
	return []Outcome{OutcomeGranted, OutcomeDenied, OutcomeInvalidRequest, OutcomeInvalidGrant, OutcomeInvalidTarget,
		OutcomeInvalidScope, OutcomeRateLimited, OutcomeUnavailable, OutcomeServerError}
}

// RevocationOutcomes lists every outcome of a revocation.
func RevocationOutcomes() []Outcome {
	return []Outcome{OutcomeRevoked, OutcomeClientRevoked, OutcomeOperatorRevoked, OutcomeJobEnded,
		OutcomeReconciledRevoked, OutcomeAbandoned, OutcomeAmbiguousMint,
		OutcomeExpiredUnconfirmed, OutcomeUnconfirmed, OutcomeFailed, OutcomeDeferred,
		OutcomeEscaped, OutcomeEscapedFailed,
		OutcomePoolRotated, OutcomePoolAdopted, OutcomePoolGone, OutcomePoolRevoked,
		OutcomeUnknownToken, OutcomeAlreadyRevoked, OutcomeAlreadyAbandoned, OutcomeUnavailable}
}

// outcomeOf is the outcome of an exchange refused with e.
func outcomeOf(e *Error) Outcome {
	if e.denied {
		return OutcomeDenied
	}
	for _, o := range ExchangeOutcomes() {
		if o.name == e.Code && o != OutcomeGranted && o != OutcomeDenied {
			return o
		}
	}
	return OutcomeServerError
}

// alreadyOutcome is the outcome of a client's revocation of a credential
// that is no longer live.
func alreadyOutcome(s ledger.State) Outcome {
	if s == ledger.Abandoned {
		return OutcomeAlreadyAbandoned
	}
	return OutcomeAlreadyRevoked
}
