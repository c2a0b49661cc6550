package e2e

import (
	"net/http"
	"strings"
	"testing"

	"gltoken.dev/gltoken/internal/gitlabfake"
)

// TestForkMergeRequestRefused: the stand-in issues the ID token of a job of a
// merge-request pipeline from a fork the way GitLab does; a rule pinning the
// project the job runs in (job_project_path) does not serve it, a rule with
// allow_fork_merge_requests: true does.
func TestForkMergeRequestRefused(t *testing.T) {
	w := newWorld(t)
	fork := w.gl.AddProject("contrib/app")
	mallory := w.gl.AddUser("mallory")
	w.gl.AddMember(mallory, "contrib/app", 40)
	d := w.startDaemon(t, daemonOpts{policy: `
rules:
  - name: app-mr-jobs
    match: {job_project_path: platform/app, pipeline_source: merge_request_event}
    allow: {projects: [platform/lib], scopes: [read_repository]}
  - name: contributors
    allow_fork_merge_requests: true
    match: {job_project_path: platform/app, pipeline_source: merge_request_event}
    allow: {projects: [platform/tools/lint], scopes: [read_repository]}
`})
	forkJob := w.job("fix-typo", false, func(j *gitlabfake.Job) { j.SourceProject, j.User = fork, mallory })
	resp, body := d.exchange(forkJob, w.gl.URL()+"/platform/lib.git", "read_repository")
	if resp.StatusCode == http.StatusOK || !strings.Contains(body, "error") {
		t.Fatalf("a fork's merge-request job got platform/lib: %d %s", resp.StatusCode, body)
	}
	// The log line may reach the test's buffer a moment after the answer.
	waitLog(t, d, "merge request from a fork")
	if resp, body := d.exchange(forkJob, w.gl.URL()+"/platform/tools/lint.git", "read_repository"); resp.StatusCode != http.StatusOK {
		t.Fatalf("allow_fork_merge_requests: %d %s", resp.StatusCode, body)
	}
	// The project's own merge-request pipeline is served by the first rule.
	own := w.job("feature", false, func(j *gitlabfake.Job) { j.PipelineSource = "merge_request_event" })
	if resp, body := d.exchange(own, w.gl.URL()+"/platform/lib.git", "read_repository"); resp.StatusCode != http.StatusOK {
		t.Fatalf("own merge-request job: %d %s", resp.StatusCode, body)
	}
	if len(w.liveMinted()) != 2 {
		t.Errorf("live minted tokens %v, want 2", w.liveMinted())
	}
}
