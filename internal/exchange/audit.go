package exchange

import (
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"time"

	"gltoken.dev/gltoken/internal/idtoken"
	"gltoken.dev/gltoken/internal/ledger"
	"gltoken.dev/gltoken/internal/policy"
)

// auditEvent is one exchange or revocation. Its keys are stable: operators
// build alerts on them. It holds fingerprints, never secrets.
type auditEvent struct {
	RequestID    string
	Outcome      Outcome
	Reason       string
	Detail       string
	Rule         string
	Shadow       []string // the verdicts of the policy's shadow rules (see shadowVerdicts)
	Issuer       string
	Subject      string
	ProjectID    string
	ProjectPath  string
	PipelineID   string
	JobID        string
	Ref          string
	Resource     string
	Target       string
	Scopes       []string
	Kind         ledger.Kind
	LedgerID     string
	GitLabID     int64
	Username     string
	ExpiresAt    time.Time
	SecretSHA256 string
	Cached       bool
	Reused       bool // a credential of another job of the project, now held by this job too
	Peer         string
	Duration     time.Duration
}

// shadowVerdicts renders what the policy's shadow rules would have decided,
// one "rule: would allow" or "rule: would deny: check" each.
func shadowVerdicts(rs []policy.ShadowResult) []string {
	if len(rs) == 0 {
		return nil
	}
	out := make([]string, len(rs))
	for i, r := range rs {
		if r.WouldAllow {
			out[i] = r.Rule + ": would allow"
		} else {
			out[i] = r.Rule + ": would deny: " + r.Failed
		}
	}
	return out
}

func (e *auditEvent) fromToken(t *idtoken.Token) {
	e.Issuer, e.Subject = t.Issuer, t.Subject
	e.ProjectID, e.ProjectPath = t.Claims["project_id"], t.Claims["project_path"]
	e.PipelineID, e.JobID, e.Ref = t.Claims["pipeline_id"], t.Claims["job_id"], t.Claims["ref"]
}

func (e *auditEvent) fromRecord(r ledger.Record) {
	e.Kind, e.LedgerID, e.GitLabID, e.Username = r.Kind, r.ID, r.GitLabID, r.Username
	e.Rule, e.Subject, e.ProjectID, e.PipelineID, e.JobID = r.Rule, r.Subject, r.ProjectID, r.PipelineID, r.JobID
	e.Resource, e.Scopes, e.ExpiresAt = r.Resource, r.Scopes, r.ExpiresAt
}

func (e *auditEvent) attrs() []slog.Attr {
	a := []slog.Attr{
		slog.String("audit", "gltoken"),
		slog.String("request_id", e.RequestID),
		slog.String("outcome", e.Outcome.String()),
	}
	str := func(k, v string) {
		if v != "" {
			a = append(a, slog.String(k, v))
		}
	}
	str("reason", e.Reason)
	str("detail", e.Detail)
	str("rule", e.Rule)
	if len(e.Shadow) > 0 {
		a = append(a, slog.Any("shadow", e.Shadow))
	}
	str("issuer", e.Issuer)
	str("sub", e.Subject)
	str("project_id", e.ProjectID)
	str("project_path", e.ProjectPath)
	str("pipeline_id", e.PipelineID)
	str("job_id", e.JobID)
	str("ref", e.Ref)
	str("resource", e.Resource)
	str("target", e.Target)
	if len(e.Scopes) > 0 {
		a = append(a, slog.Any("scopes", e.Scopes))
	}
	str("kind", string(e.Kind))
	str("ledger_id", e.LedgerID)
	if e.GitLabID != 0 {
		a = append(a, slog.Int64("gitlab_token_id", e.GitLabID))
	}
	str("username", e.Username)
	if !e.ExpiresAt.IsZero() {
		a = append(a, slog.Time("expires_at", e.ExpiresAt.UTC()))
	}
	str("secret_sha256", e.SecretSHA256)
	if e.Cached {
		a = append(a, slog.Bool("cached", true))
	}
	if e.Reused {
		a = append(a, slog.Bool("reused", true))
	}
	str("peer", e.Peer)
	a = append(a, slog.Float64("duration_ms", float64(e.Duration.Microseconds())/1000))
	return a
}

// The actions no client asks for, which name the request ids of their audit
// events.
const (
	actionReaper   = "reaper"   // a revocation at the TTL, an intent settled
	actionSweep    = "sweep"    // an escaped token the sweep found
	actionJobEnd   = "jobend"   // the credentials of a job that ended (found by the job poll)
	actionOperator = "operator" // exchanged credentials revoke
)

// backgroundID is the request id of one action no client asked for: the
// action's name, "-" and 16 hex digits ("reaper-…", "sweep-…", "jobend-…",
// "operator-…"). Every audit event of the action carries it, as every event
// of a request carries the request's id.
func backgroundID(action string) string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return action + "-" + hex.EncodeToString(b[:])
}
