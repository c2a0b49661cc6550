package exchange

import (
	"log/slog"
	"time"
)

// RFC 6749 / RFC 8693 error codes the service returns; the HTTP layer maps
// each to its status in one place.
const (
	CodeInvalidRequest = "invalid_request"
	// CodeUnsupportedGrantType: a grant other than token exchange (the HTTP
	// layer refuses it before the service is asked).
	CodeUnsupportedGrantType = "unsupported_grant_type"
	CodeInvalidGrant         = "invalid_grant"
	CodeInvalidTarget        = "invalid_target"
	CodeInvalidScope         = "invalid_scope"
	CodeUnavailable          = "temporarily_unavailable"
	CodeRateLimited          = "rate_limited" // sent as HTTP 429 with Retry-After
	CodeServerError          = "server_error"
)

// Error is what Exchange and Revoke return: a code and a description that are
// safe to show the client, and detail that only goes to the log.
type Error struct {
	Code        string
	Description string
	RetryAfter  time.Duration
	detail      string
	reason      string // of a CodeRateLimited error: which limit (for metrics and logs)
	// denied: the trust policy refused the request (the audit's and the
	// metric's outcome is denied, whatever the code).
	denied bool
}

func (e *Error) Error() string { return e.Code + ": " + e.Description }

// LimitReason names the limit behind a CodeRateLimited error ("job_mints",
// "gitlab_budget", "gitlab", …); "" for other errors.
func (e *Error) LimitReason() string { return e.reason }

// Detail is the internal cause, for the operator's log (never a secret).
func (e *Error) Detail() string { return e.detail }

func internalError(err error) *Error {
	return &Error{Code: CodeServerError, Description: "internal error; the daemon's log has the details", detail: err.Error()}
}

func levelFor(err error) slog.Level {
	if err == nil {
		return slog.LevelInfo
	}
	if e, ok := err.(*Error); ok && (e.Code == CodeServerError || e.Code == CodeUnavailable) {
		return slog.LevelError
	}
	return slog.LevelWarn
}
