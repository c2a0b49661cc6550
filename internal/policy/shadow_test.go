package policy

import (
	"slices"
	"testing"
)

const shadowPolicy = `rules:
  - name: narrow
    mode: shadow
    match: {project_path: platform/app, ref_protected: "true"}
    allow: {projects: [platform/lib], scopes: [read_repository]}
  - name: broad
    match: {project_path: platform/app}
    allow: {projects: ["platform/*"], scopes: [read_repository]}
  - name: new-target
    mode: shadow
    match: {project_path: platform/app}
    allow: {projects: [other/thing], scopes: [read_repository]}
  - name: other-job
    mode: shadow
    match: {project_path: elsewhere/app}
    allow: {projects: ["**"], scopes: [read_repository]}
`

// TestShadowRules: a rule in mode shadow never grants, never denies and never
// changes the enforced decision, which is the policy's without its shadow
// rules. Each shadow rule whose match accepts the job's claims is judged on
// its own, whatever the other rules decide, and the decision reports
// would_allow or would_deny (with the check that failed); a shadow rule whose
// match does not accept the claims is not about this job and is not
// reported.
func TestShadowRules(t *testing.T) {
	pol := mustParse(t, shadowPolicy)
	for _, tc := range []struct {
		name, project string
		claims        map[string]string
		allowed       bool
		rule          string
		shadow        []string
	}{
		{"both allow", "platform/lib", claims(), true, "broad", []string{"narrow=would_allow", "new-target=would_deny"}},
		{"shadow would deny what is allowed", "platform/other", claims(), true, "broad", []string{"narrow=would_deny", "new-target=would_deny"}},
		{"shadow would allow what is denied", "other/thing", claims(), false, "", []string{"narrow=would_deny", "new-target=would_allow"}},
		{"unprotected job", "platform/lib", claims("ref_protected", "false"), true, "broad", []string{"new-target=would_deny"}},
		{"no shadow rule concerns the job", "platform/lib", claims("project_path", "x/y"), false, "", nil},
	} {
		d := pol.Evaluate(Request{Claims: tc.claims, Project: tc.project, Scopes: []string{"read_repository"}})
		var got []string
		for _, s := range d.Shadow {
			v := "would_deny"
			if s.WouldAllow {
				v = "would_allow"
			} else if s.Failed == "" {
				t.Errorf("%s: %s would deny without saying why", tc.name, s.Rule)
			}
			got = append(got, s.Rule+"="+v)
		}
		if d.Allowed != tc.allowed || d.Rule != tc.rule || !slices.Equal(got, tc.shadow) {
			t.Errorf("%s: allowed %v by %q, shadow %v; want %v by %q, shadow %v (%s)", tc.name, d.Allowed, d.Rule, got, tc.allowed, tc.rule, tc.shadow, d.Reason)
		}
	}
	// Without its shadow rules the policy decides the same.
	plain := mustParse(t, `rules:
  - name: broad
    match: {project_path: platform/app}
    allow: {projects: ["platform/*"], scopes: [read_repository]}
`)
	for _, project := range []string{"platform/lib", "other/thing"} {
		a := pol.Evaluate(Request{Claims: claims(), Project: project, Scopes: []string{"read_repository"}})
		b := plain.Evaluate(Request{Claims: claims(), Project: project, Scopes: []string{"read_repository"}})
		if a.Allowed != b.Allowed || a.Rule != b.Rule || a.Reason != b.Reason {
			t.Errorf("%s: with shadow rules %v %q %q; without %v %q %q", project, a.Allowed, a.Rule, a.Reason, b.Allowed, b.Rule, b.Reason)
		}
	}
}

func TestParseMode(t *testing.T) {
	le := parseErr(t, "rules:\n  - name: r\n    mode: audit\n    match: {project_path: a/b}\n    allow: {projects: [a/c], scopes: [read_repository]}\n", Options{})
	checkProblems(t, le, []wantProblem{{3, "r", "mode", `want enforce or shadow, not "audit"`}})
	pol := mustParse(t, "rules:\n  - name: r\n    mode: enforce\n    match: {project_path: platform/app}\n    allow: {projects: [a/c], scopes: [read_repository]}\n")
	if d := pol.Evaluate(Request{Claims: claims(), Project: "a/c", Scopes: []string{"read_repository"}}); !d.Allowed {
		t.Errorf("mode enforce: %s", d.Reason)
	}
}
