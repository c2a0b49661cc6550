package exchange

import (
	"time"

	"gltoken.dev/gltoken/internal/idtoken"
)

// MintLimiter bounds mints by what a verified ID token proves. The service
// consults it only when a request would mint, before any GitLab call: a
// credential served from the cache is never limited. httpapi.MintQuotas
// implements it.
type MintLimiter interface {
	// AllowMint admits one mint, or says why not (a short reason for metrics
	// and logs, e.g. "job_mints") and when to try again. A refusal spends
	// nothing.
	AllowMint(m MintSubject) (ok bool, retryAfter time.Duration, reason string)
	// ClientRevoked is told that a client revoked (RFC 7009) a credential
	// that job held on owner, so that the limiter can cap the re-mints of a
	// job that loops exchange → revoke.
	ClientRevoked(job, owner string)
}

// Reasons a mint is answered 429 (Error.LimitReason; the reason label of
// gltoken_rate_limited_total): the first three a MintLimiter gives.
const (
	LimitJobMints     = "job_mints"            // mints per job
	LimitProjectMints = "project_mints"        // mints per source project
	LimitRemints      = "remints_after_revoke" // re-mints of a job on an owner after client revocations
	LimitGitLabBudget = "gitlab_budget"        // the daemon's own GitLab API budget is spent
	LimitGitLab       = "gitlab"               // GitLab answered 429
)

// MintSubject is what a mint is limited by.
type MintSubject struct {
	Job     string // the job: its job_id claim (or, without one, its jti)
	Project string // the source project: its project_id claim (or path)
	Owner   string // the project or group the credential is for (full path)
}

// jobKey names a job the same way from its ID token and from its ledger
// record (the ledger keeps job_id and jti, not the whole token).
func jobKey(jobID, jti string) string {
	if jobID != "" {
		return "job:" + jobID
	}
	return "jti:" + jti
}

func mintSubject(tok *idtoken.Token, owner string) MintSubject {
	project := tok.Claims["project_id"]
	if project == "" {
		project = "path:" + tok.Claims["project_path"]
	}
	return MintSubject{Job: jobKey(tok.Claims["job_id"], tok.ID), Project: project, Owner: owner}
}

// admitMint asks the limiter, if any, whether tok may cause one more mint on owner.
func (s *Service) admitMint(tok *idtoken.Token, owner string) error {
	if s.cfg.Limiter == nil {
		return nil
	}
	ok, after, reason := s.cfg.Limiter.AllowMint(mintSubject(tok, owner))
	if ok {
		return nil
	}
	desc := "this job has asked for too many new credentials; try again later"
	switch reason {
	case LimitProjectMints:
		desc = "the jobs of this project have asked for too many new credentials; try again later"
	case LimitRemints:
		desc = "this job keeps revoking and asking again for credentials on " + owner + "; try again later"
	}
	return &Error{Code: CodeRateLimited, Description: desc, RetryAfter: max(after, time.Second), reason: reason}
}
