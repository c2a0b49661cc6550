package gitlab

import (
	"context"
	"fmt"
	"net/http"
	"strconv"

	"gltoken.dev/gltoken/internal/exchange"
)

const routeProjectJob = "/projects/:id/jobs/:job_id"

// JobStatus returns a CI job's status as GET /projects/:id/jobs/:job_id
// answers it (created, pending, running, success, failed, canceled,
// skipped, manual, …). GitLab requires read access to the project's jobs
// (the read_build permission: Reporter or higher on a private project), so
// the service account must be a member of the jobs' projects: a 403, or a
// 404 for a project it cannot see, comes back wrapping exchange.ErrForbidden
// or exchange.ErrNotFound and says so. projectID and jobID are GitLab's
// numeric ids, as the ID token's claims carry them.
func (c *Client) JobStatus(ctx context.Context, projectID, jobID string) (string, error) {
	pid, err := strconv.ParseInt(projectID, 10, 64)
	if err != nil || pid <= 0 {
		return "", fmt.Errorf("job status: project id %q: %w: not a GitLab id", projectID, exchange.ErrRejected)
	}
	jid, err := strconv.ParseInt(jobID, 10, 64)
	if err != nil || jid <= 0 {
		return "", fmt.Errorf("job status: job id %q: %w: not a GitLab id", jobID, exchange.ErrRejected)
	}
	op := fmt.Sprintf("read job %d of project %d", jid, pid)
	job, resp, err := c.gl.Jobs.GetJob(pid, jid, reqOpts(ctx, http.MethodGet, routeProjectJob)...)
	if err != nil {
		return "", c.mapError(op, "", resp, err, false)
	}
	if job == nil || job.Status == "" {
		return "", fmt.Errorf("%s: %w: GitLab's answer has no status", op, exchange.ErrUnavailable)
	}
	return job.Status, nil
}
