package policy

import (
	"slices"
	"strings"
	"testing"
)

// TestAPIScopeOnlyWhenNamed (issue 9.1): api is granted only by a rule that
// names it; no other scope implies it, and a rule naming it grants it only
// when it is asked for.
func TestAPIScopeOnlyWhenNamed(t *testing.T) {
	pol := mustParse(t, `rules:
  - name: pushes
    match: {project_path: platform/app}
    allow:
      projects: [platform/deploy]
      scopes: [read_repository, write_repository, read_api]
  - name: api
    match: {project_path: platform/app}
    allow:
      projects: [platform/ops]
      scopes: [api, read_repository]
`)
	tests := []struct {
		project string
		scopes  []string
		allowed bool
		granted []string
	}{
		{"platform/deploy", []string{"api"}, false, nil},
		{"platform/deploy", []string{"read_api", "write_repository"}, true, []string{"read_api", "write_repository"}},
		{"platform/ops", []string{"read_repository"}, true, []string{"read_repository"}},
		{"platform/ops", []string{"read_api"}, false, nil},
		{"platform/ops", []string{"api"}, true, []string{"api"}},
	}
	for _, tt := range tests {
		d := pol.Evaluate(Request{Claims: claims(), Project: tt.project, Scopes: tt.scopes})
		if d.Allowed != tt.allowed || !slices.Equal(d.Scopes, tt.granted) {
			t.Errorf("%s %v: allowed %v scopes %v, want %v %v (%s)", tt.project, tt.scopes, d.Allowed, d.Scopes, tt.allowed, tt.granted, d.Reason)
		}
	}
}

// TestAPIWithMaintainerNeedsAcknowledgement (issue 9.1): api with the
// maintainer role is a load-time error unless the rule sets
// acknowledge_api_maintainer: true; self_rotate can never be granted.
func TestAPIWithMaintainerNeedsAcknowledgement(t *testing.T) {
	rule := func(extra string) string {
		return `rules:
  - name: ops
    match: {project_path: platform/app}
    allow:
      projects: [platform/ops]
      scopes: [api]
` + extra
	}
	le := parseErr(t, rule("      access_level: maintainer\n"), Options{})
	checkProblems(t, le, []wantProblem{{7, "ops", "allow.access_level", AcknowledgeAPIMaintainerKey}})
	le = parseErr(t, rule("      access_level: 40\n      acknowledge_api_maintainer: yes\n"), Options{})
	checkProblems(t, le, []wantProblem{{8, "ops", "allow.acknowledge_api_maintainer", "true or false"}, {7, "ops", "allow.access_level", "maintainer"}})
	le = parseErr(t, rule("      access_level: maintainer\n      acknowledge_api_maintainer: false\n"), Options{})
	checkProblems(t, le, []wantProblem{{7, "ops", "allow.access_level", "maintainer"}})

	for _, ok := range []string{
		"      access_level: maintainer\n      acknowledge_api_maintainer: true\n",
		"      access_level: developer\n",
		"",
	} {
		pol, err := Parse([]byte(rule(ok)), "policy.yaml", Options{})
		if err != nil {
			t.Errorf("%q: %v", ok, err)
			continue
		}
		d := pol.Evaluate(Request{Claims: claims(), Project: "platform/ops", Scopes: []string{"api"}})
		if !d.Allowed {
			t.Errorf("%q: denied: %s", ok, d.Reason)
		}
	}
	// Maintainer without api needs no acknowledgement.
	if _, err := Parse([]byte(strings.Replace(rule("      access_level: maintainer\n"), "[api]", "[write_repository]", 1)), "policy.yaml", Options{}); err != nil {
		t.Errorf("maintainer without api: %v", err)
	}
	le = parseErr(t, strings.Replace(rule(""), "[api]", "[api, self_rotate]", 1), Options{})
	checkProblems(t, le, []wantProblem{{6, "ops", "allow.scopes", `unknown scope "self_rotate"`}})
}
