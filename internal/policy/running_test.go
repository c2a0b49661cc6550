package policy

import (
	"errors"
	"strings"
	"testing"
)

func TestParseRequireRunningJob(t *testing.T) {
	pol, err := Parse([]byte(`rules:
  - name: default
    match: {project_path: a/b}
    allow: {projects: [a/c], scopes: [read_repository]}
  - name: strict
    require_running_job: true
    match: {project_path: a/b}
    allow: {projects: [a/d], scopes: [read_repository]}
  - name: lax
    require_running_job: false
    match: {project_path: a/b}
    allow: {projects: [a/e], scopes: [read_repository]}
`), "p.yaml", Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		project string
		want    bool
	}{{"a/c", false}, {"a/d", true}, {"a/e", false}} {
		d := pol.Evaluate(Request{Claims: map[string]string{"project_path": "a/b"}, Project: tc.project, Scopes: []string{"read_repository"}})
		if !d.Allowed || d.RequireRunningJob != tc.want {
			t.Errorf("%s: allowed %v, require_running_job %v; want %v", tc.project, d.Allowed, d.RequireRunningJob, tc.want)
		}
	}

	for _, bad := range []string{"yes", `"maybe"`, "[true]"} {
		_, err := Parse([]byte("rules:\n  - name: r\n    require_running_job: "+bad+"\n    match: {project_path: a/b}\n    allow: {projects: [a/c], scopes: [read_repository]}\n"), "p.yaml", Options{})
		var le *LoadError
		if !errors.As(err, &le) || !strings.Contains(err.Error(), "require_running_job") {
			t.Errorf("require_running_job: %s: err = %v, want a load error naming the key", bad, err)
		}
	}
}
