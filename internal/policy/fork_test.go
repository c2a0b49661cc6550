package policy

import (
	"strings"
	"testing"
)

// forkClaims are the claims GitLab (18.4+) puts in the ID token of a job of a
// merge-request pipeline from the fork contrib/app into platform/app: the
// project_* and namespace_* claims and sub name the fork (the merge
// request's source project), job_project_* and job_namespace_* the project
// the job runs in.
func forkClaims(kv ...string) map[string]string {
	return override(claims(
		"project_id", "99", "project_path", "contrib/app", "namespace_id", "9", "namespace_path", "contrib",
		"job_project_id", "42", "job_project_path", "platform/app", "job_namespace_id", "7", "job_namespace_path", "platform",
		"pipeline_source", "merge_request_event", "ref", "fix-typo", "ref_path", "refs/heads/fix-typo", "ref_protected", "false",
		"sub", "project_path:contrib/app:ref_type:branch:ref:fix-typo",
		"ci_config_ref_uri", "gitlab.example.com/platform/app//.gitlab-ci.yml@refs/heads/fix-typo",
	), kv...)
}

const forkPolicy = `rules:
  - name: by-project
    match:
      project_path: platform/app
    allow:
      projects: [platform/old]
      scopes: [read_repository]
  - name: by-job-project
    match:
      job_project_path: platform/app
    allow:
      projects: [platform/lib]
      scopes: [read_repository]
  - name: by-config
    match:
      ci_config_ref_uri: "gitlab.example.com/platform/app//.gitlab-ci.yml@refs/heads/*"
    allow:
      projects: [platform/docs]
      scopes: [read_repository]
  - name: any-mr
    match:
      pipeline_source: merge_request_event
    allow:
      projects: [platform/any]
      scopes: [read_repository]
  - name: contributors
    allow_fork_merge_requests: true
    match:
      job_project_path: platform/app
      pipeline_source: merge_request_event
    allow:
      projects: [platform/testdata]
      scopes: [read_repository]
`

// TestForkMergeRequestsRefusedByDefault: a job of a merge-request pipeline
// from a fork runs the fork's code; no rule serves it unless the rule says
// allow_fork_merge_requests: true — not even a rule whose claims (the job's
// project, the CI config's project, the pipeline source) all name the parent.
func TestForkMergeRequestsRefusedByDefault(t *testing.T) {
	pol := mustParse(t, forkPolicy)
	for _, tc := range []struct {
		name, project string
		claims        map[string]string
		allowed       bool
		rule, reason  string
	}{
		{"fork job, job_project_path rule", "platform/lib", forkClaims(), false, "by-job-project", "merge request from a fork"},
		{"fork job, ci_config_ref_uri rule", "platform/docs", forkClaims(), false, "by-config", "merge request from a fork"},
		{"fork job, pipeline_source rule", "platform/any", forkClaims(), false, "any-mr", "merge request from a fork"},
		{"fork job, rule that allows forks", "platform/testdata", forkClaims(), true, "contributors", ""},
		{"fork told apart by path alone", "platform/lib", forkClaims("project_id", "-", "job_project_id", "-"), false, "by-job-project", "job_project_path"},
		{"own MR pipeline", "platform/lib", claims("job_project_id", "42", "job_project_path", "platform/app", "pipeline_source", "merge_request_event"), true, "by-job-project", ""},
		{"own push pipeline", "platform/lib", claims("job_project_id", "42", "job_project_path", "platform/app"), true, "by-job-project", ""},
		// GitLab before 18.4 has no job_project_* claims: a merge-request
		// pipeline cannot be told from a fork's (before GitLab fixed the
		// project_* claims, a fork's job even carried the parent's), so it
		// is refused too; other pipelines are served as before.
		{"MR pipeline without job_project_id", "platform/old", claims("pipeline_source", "merge_request_event"), false, "by-project", "no job_project_id"},
		{"push pipeline without job_project_id", "platform/old", claims(), true, "by-project", ""},
	} {
		d := pol.Evaluate(Request{Claims: tc.claims, Project: tc.project, Scopes: []string{"read_repository"}})
		if tc.allowed {
			if !d.Allowed || d.Rule != tc.rule {
				t.Errorf("%s: allowed %v by %q (%s); want allowed by %q", tc.name, d.Allowed, d.Rule, d.Reason, tc.rule)
			}
			continue
		}
		if d.Allowed {
			t.Errorf("%s: allowed by %q", tc.name, d.Rule)
			continue
		}
		// The rule that would have served the target says why it did not.
		for _, st := range d.Trace {
			if st.Rule == tc.rule && !strings.Contains(st.Failed, tc.reason) {
				t.Errorf("%s: rule %q failed with %q; want %q", tc.name, tc.rule, st.Failed, tc.reason)
			}
		}
	}
}

// TestForkDenialSaysWhy: when the guard is all that stood between a rule and
// the request, the decision's reason says so.
func TestForkDenialSaysWhy(t *testing.T) {
	pol := mustParse(t, forkPolicy)
	d := pol.Evaluate(Request{Claims: forkClaims(), Project: "platform/lib", Scopes: []string{"read_repository"}})
	if d.Allowed || !strings.Contains(d.Reason, `rule "by-job-project": merge request from a fork: project_id "99" is not job_project_id "42"`) || !strings.Contains(d.Reason, AllowForkMergeRequestsKey) {
		t.Errorf("reason %q", d.Reason)
	}
}

func TestParseAllowForkMergeRequests(t *testing.T) {
	for _, v := range []string{"yes", `"1"`, "on", "True"} {
		src := "rules:\n  - name: r\n    allow_fork_merge_requests: " + v + "\n    match: {project_path: a/b}\n    allow: {projects: [a/c], scopes: [read_repository]}\n"
		le := parseErr(t, src, Options{})
		checkProblems(t, le, []wantProblem{{3, "r", AllowForkMergeRequestsKey, "true or false"}})
	}
	pol := mustParse(t, "rules:\n  - name: r\n    allow_fork_merge_requests: false\n    match: {job_project_path: a/b}\n    allow: {projects: [a/c], scopes: [read_repository]}\n")
	d := pol.Evaluate(Request{Claims: forkClaims("job_project_path", "a/b"), Project: "a/c", Scopes: []string{"read_repository"}})
	if d.Allowed {
		t.Error("allow_fork_merge_requests: false admitted a fork's job")
	}
}
