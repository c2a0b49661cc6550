package policy

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

func mustParse(tb testing.TB, src string) *Policy {
	tb.Helper()
	pol, err := Parse([]byte(src), "test.yaml", Options{})
	if err != nil {
		tb.Fatalf("Parse: %v", err)
	}
	return pol
}

// claims builds a claim set from a protected main-branch job of platform/app,
// overridden by kv pairs ("key", "value", …; value "-" deletes the claim).
func claims(kv ...string) map[string]string {
	return override(map[string]string{
		"namespace_id": "7", "namespace_path": "platform", "project_id": "42", "project_path": "platform/app",
		"ref": "main", "ref_type": "branch", "ref_path": "refs/heads/main", "ref_protected": "true",
		"pipeline_source": "push", "user_login": "alice",
	}, kv...)
}

// override sets the kv pairs in c ("key", "value", …; value "-" deletes the
// claim) and returns it.
func override(c map[string]string, kv ...string) map[string]string {
	for i := 0; i+1 < len(kv); i += 2 {
		if kv[i+1] == "-" {
			delete(c, kv[i])
		} else {
			c[kv[i]] = kv[i+1]
		}
	}
	return c
}

const matrixPolicy = `rules:
  - name: protected-reads-libs
    match:
      project_path: platform/app
      ref_protected: "true"
    allow:
      projects: [platform/lib, "platform/libs/*"]
      scopes: [read_repository, read_registry]
      ttl: 2h

  - name: deep-libs
    match:
      project_path: platform/app
      ref_protected: "true"
    allow:
      projects: ["platform/deep/**"]
      scopes: [read_repository]

  - name: prod-deploys
    match:
      project_path: platform/app
      environment: ["prod-*", "production"]
      environment_protected: "true"
    allow:
      projects: [platform/charts]
      scopes: [write_repository, read_repository]
      ttl: 10m
      access_level: maintainer

  - name: feature-branches
    match:
      project_path: "platform/*"
      ref: "feature/**"
    allow:
      projects: [platform/sandbox]
      scopes: [read_repository]

  - name: own-namespace
    match:
      namespace_path: "teams/**"
    allow:
      projects: ["{{namespace_path}}/*", "shared/{{ ref }}"]
      scopes: [read_repository]

  - name: ref-exact
    match:
      project_path: tools/app
    allow:
      projects: ["tools/{{ref}}", "tools/cfg-{{environment}}"]
      scopes: [read_repository]

  - name: multirepo
    match:
      project_path: platform/app
    allow:
      groups: [platform/tools, "{{namespace_path}}/bundles"]
      projects: [platform/tools/special]
      scopes: [read_repository, read_package_registry]
      ttl: 5m

  - name: shadowed-by-first
    match:
      project_path: platform/app
    allow:
      projects: [platform/lib]
      scopes: [read_repository, write_repository]
`

func TestEvaluateMatrix(t *testing.T) {
	pol := mustParse(t, matrixPolicy)
	tests := []struct {
		name    string
		claims  map[string]string
		project string
		scopes  []string
		allow   bool
		rule    string
		group   string
		reason  string // denial: substring of Reason
		step    string // denial: substring of some Trace step (optional)
	}{
		// protected vs unprotected ref
		{"protected ref reads lib", claims(), "platform/lib", []string{"read_repository"}, true, "protected-reads-libs", "", "", ""},
		{"unprotected ref is denied", claims("ref_protected", "false"), "platform/libs/a", []string{"read_repository"}, false, "", "",
			`closest: rule "multirepo": allow.projects/allow.groups: platform/libs/a not listed`, `match.ref_protected: "false" does not match "true"`},
		{"ref_protected missing is denied", claims("ref_protected", "-"), "platform/libs/a", []string{"read_repository"}, false, "", "",
			`closest: rule "multirepo"`, `match.ref_protected: claim missing from the ID token`},

		// * vs **
		{"* matches one segment", claims(), "platform/libs/a", []string{"read_repository"}, true, "protected-reads-libs", "", "", ""},
		{"* does not cross /", claims(), "platform/libs/a/b", []string{"read_repository"}, false, "", "",
			"allow.projects: platform/libs/a/b not listed", ""},
		{"** crosses /", claims(), "platform/deep/a/b/c", []string{"read_repository"}, true, "deep-libs", "", "", ""},
		{"** one level", claims(), "platform/deep/a", []string{"read_repository"}, true, "deep-libs", "", "", ""},
		{"other namespace", claims(), "platform2/deep/a", []string{"read_repository"}, false, "", "", "not listed", ""},
		{"case-sensitive", claims(), "Platform/lib", []string{"read_repository"}, false, "", "", "not listed", ""},

		// scopes: subsets, order, first match
		{"subset of scopes", claims(), "platform/lib", []string{"read_registry", "read_repository"}, true, "protected-reads-libs", "", "", ""},
		{"scope outside rule falls through to a later rule", claims(), "platform/lib", []string{"write_repository"}, true, "shadowed-by-first", "", "", ""},
		{"scope nobody grants", claims(), "platform/libs/x", []string{"read_repository", "api"}, false, "", "",
			`closest: rule "protected-reads-libs": allow.scopes: api not allowed (allowed: read_repository, read_registry)`, ""},

		// environment globs and lists of globs
		{"environment list, glob", claims("environment", "prod-eu", "environment_protected", "true"), "platform/charts", []string{"write_repository"}, true, "prod-deploys", "", "", ""},
		{"environment list, literal", claims("environment", "production", "environment_protected", "true"), "platform/charts", []string{"write_repository", "read_repository"}, true, "prod-deploys", "", "", ""},
		{"environment outside list", claims("environment", "staging", "environment_protected", "true"), "platform/charts", []string{"write_repository"}, false, "", "",
			`closest: rule "protected-reads-libs": allow.projects: platform/charts not listed`, `match.environment: "staging" does not match any of ["prod-*", "production"]`},
		{"environment glob does not cross /", claims("environment", "prod-eu/1", "environment_protected", "true"), "platform/charts", []string{"write_repository"}, false, "", "", "not listed", `match.environment: "prod-eu/1" does not match`},
		{"unprotected environment", claims("environment", "prod-eu", "environment_protected", "false"), "platform/charts", []string{"write_repository"}, false, "", "",
			"not listed", `match.environment_protected: "false" does not match "true"`},
		{"no environment at all", claims(), "platform/charts", []string{"write_repository"}, false, "", "", "not listed", "match.environment: claim missing"},

		// match globs on claims
		{"ref ** crosses /", claims("project_path", "platform/web", "ref", "feature/a/b", "ref_protected", "false"), "platform/sandbox", []string{"read_repository"}, true, "feature-branches", "", "", ""},
		{"ref glob needs the prefix", claims("project_path", "platform/web", "ref", "feat/a"), "platform/sandbox", []string{"read_repository"}, false, "", "", `match.ref: "feat/a" does not match "feature/**"`, ""},
		{"project_path * one level", claims("project_path", "platform/sub/web", "ref", "feature/x"), "platform/sandbox", []string{"read_repository"}, false, "", "", "does not match", ""},

		// templates
		{"template: own namespace", claims("namespace_path", "teams/red", "project_path", "teams/red/app"), "teams/red/lib", []string{"read_repository"}, true, "own-namespace", "", "", ""},
		{"template: other namespace", claims("namespace_path", "teams/red", "project_path", "teams/red/app"), "teams/blue/lib", []string{"read_repository"}, false, "", "", "not listed", ""},
		{"template: nested namespace value", claims("namespace_path", "teams/red/sub", "project_path", "teams/red/sub/app"), "teams/red/sub/lib", []string{"read_repository"}, true, "own-namespace", "", "", ""},
		{"template with spaces", claims("namespace_path", "teams/red", "ref", "v1"), "shared/v1", []string{"read_repository"}, true, "own-namespace", "", "", ""},

		// malicious claim values must match only themselves
		{"malicious ref a/*", claims("project_path", "tools/app", "ref", "a/*"), "tools/a/b", []string{"read_repository"}, false, "", "", "not listed", ""},
		{"malicious ref ** ", claims("project_path", "tools/app", "ref", "**"), "tools/secret/x", []string{"read_repository"}, false, "", "", "not listed", ""},
		{"malicious ref *", claims("project_path", "tools/app", "ref", "*"), "tools/secret", []string{"read_repository"}, false, "", "", "not listed", ""},
		{"malicious ref {x,y}", claims("project_path", "tools/app", "ref", "{secret,x}"), "tools/secret", []string{"read_repository"}, false, "", "", "not listed", ""},
		{"malicious ref [a-z]*", claims("project_path", "tools/app", "ref", "[a-z]*"), "tools/secret", []string{"read_repository"}, false, "", "", "not listed", ""},
		{"malicious ref ?", claims("project_path", "tools/app", "ref", "s?cret"), "tools/secret", []string{"read_repository"}, false, "", "", "not listed", ""},
		{"malicious ref backslash", claims("project_path", "tools/app", "ref", `\s`), "tools/s", []string{"read_repository"}, false, "", "", "not listed", ""},
		{"malicious ref with comma", claims("project_path", "tools/app", "ref", "a,secret"), "tools/secret", []string{"read_repository"}, false, "", "", "not listed", ""},
		{"ref with slash is one segment", claims("project_path", "tools/app", "ref", "release/v1"), "tools/release/v1", []string{"read_repository"}, false, "", "", "not listed", ""},
		{"benign ref exact", claims("project_path", "tools/app", "ref", "lib"), "tools/lib", []string{"read_repository"}, true, "ref-exact", "", "", ""},
		{"empty environment does not widen", claims("project_path", "tools/app", "ref", "-", "environment", ""), "tools/cfg-", []string{"read_repository"}, false, "", "", "not listed", ""},
		{"missing claim in template matches nothing", claims("project_path", "tools/app", "ref", "-"), "tools/main", []string{"read_repository"}, false, "", "", "not listed", ""},

		// groups
		{"group: direct child", claims(), "platform/tools/a", []string{"read_package_registry"}, true, "multirepo", "platform/tools", "", ""},
		{"group: deep child", claims(), "platform/tools/sub/b", []string{"read_repository"}, true, "multirepo", "platform/tools", "", ""},
		{"group: listed project inside group gets the group", claims(), "platform/tools/special", []string{"read_repository"}, true, "multirepo", "platform/tools", "", ""},
		{"group: the group path itself is no project under it", claims(), "platform/tools", []string{"read_repository"}, false, "", "",
			"not listed", "allow.projects/allow.groups: platform/tools not listed"},
		{"group: sibling prefix", claims(), "platform/toolsx/a", []string{"read_repository"}, false, "", "", "not listed", ""},
		{"group: templated", claims(), "platform/bundles/x", []string{"read_repository"}, true, "multirepo", "platform/bundles", "", ""},

		// request validation
		{"no scopes", claims(), "platform/lib", nil, false, "", "", "request: no scopes requested", ""},
		{"unknown scope", claims(), "platform/lib", []string{"read_repository", "sudo"}, false, "", "", `request: unknown scope "sudo"`, ""},
		{"empty project", claims(), "", []string{"read_repository"}, false, "", "", "not a GitLab project path", ""},
		{"project with ..", claims(), "platform/libs/../secret", []string{"read_repository"}, false, "", "", "not a GitLab project path", ""},
		{"project with leading slash", claims(), "/platform/lib", []string{"read_repository"}, false, "", "", "not a GitLab project path", ""},
		{"project with glob chars", claims(), "platform/libs/*", []string{"read_repository"}, false, "", "", "not a GitLab project path", ""},
		{"single segment", claims(), "platform", []string{"read_repository"}, false, "", "", "not a GitLab project path", ""},

		// nothing matches the claims at all
		{"stranger", claims("project_path", "evil/app", "namespace_path", "evil"), "platform/lib", []string{"read_repository"}, false, "", "",
			`no rule matches this job's ID token (closest: rule "protected-reads-libs": match.project_path: "evil/app" does not match "platform/app")`, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := pol.Evaluate(Request{Claims: tt.claims, Project: tt.project, Scopes: tt.scopes})
			if d.Allowed != tt.allow {
				t.Fatalf("Allowed = %v, want %v (reason %q, rule %q)", d.Allowed, tt.allow, d.Reason, d.Rule)
			}
			if len(d.Trace) != len(pol.Rules()) {
				t.Errorf("trace has %d steps, want %d", len(d.Trace), len(pol.Rules()))
			}
			if !tt.allow {
				if !strings.Contains(d.Reason, tt.reason) {
					t.Errorf("Reason = %q\nwant it to contain %q", d.Reason, tt.reason)
				}
				if tt.step != "" && !slices.ContainsFunc(d.Trace, func(s Step) bool { return strings.Contains(s.Failed, tt.step) }) {
					t.Errorf("no trace step contains %q: %+v", tt.step, d.Trace)
				}
				if strings.ContainsAny(d.Reason, "\r\n") {
					t.Errorf("Reason has a line break: %q", d.Reason)
				}
				if d.Rule != "" || d.Scopes != nil || d.Group != "" || d.TTL != 0 {
					t.Errorf("denial carries a grant: %+v", d)
				}
				return
			}
			if d.Rule != tt.rule || d.Group != tt.group {
				t.Errorf("rule %q group %q, want %q %q", d.Rule, d.Group, tt.rule, tt.group)
			}
			if !slices.Equal(d.Scopes, tt.scopes) {
				t.Errorf("Scopes = %v, want exactly the requested %v", d.Scopes, tt.scopes)
			}
			if d.Reason != "" {
				t.Errorf("Reason = %q on a grant", d.Reason)
			}
		})
	}
}

func TestEvaluateGrantDetails(t *testing.T) {
	pol := mustParse(t, matrixPolicy)
	d := pol.Evaluate(Request{
		Claims:  claims("environment", "prod-eu", "environment_protected", "true"),
		Project: "platform/charts", Scopes: []string{"write_repository", "read_repository", "write_repository"},
	})
	if !d.Allowed || d.TTL != 10*time.Minute || d.AccessLevel != AccessMaintainer {
		t.Fatalf("decision %+v, want prod-deploys with ttl 10m, maintainer", d)
	}
	if !slices.Equal(d.Scopes, []string{"write_repository", "read_repository"}) {
		t.Errorf("Scopes = %v, want the requested ones deduplicated", d.Scopes)
	}
	d = pol.Evaluate(Request{Claims: claims(), Project: "platform/deep/x", Scopes: []string{"read_repository"}})
	if !d.Allowed || d.TTL != DefaultTTL || d.AccessLevel != AccessDeveloper {
		t.Errorf("decision %+v, want defaults 1h / developer", d)
	}
}

// The first rule in file order wins even when a later one also matches,
// and the trace shows every rule.
func TestEvaluateFirstMatchAndTrace(t *testing.T) {
	pol := mustParse(t, `rules:
  - name: other-project
    match: {project_path: x/y}
    allow: {projects: ["platform/**"], scopes: [read_repository]}
  - name: first
    match: {project_path: platform/app}
    allow: {projects: ["platform/*"], scopes: [read_repository], ttl: 1m}
  - name: second
    match: {project_path: "platform/*"}
    allow: {projects: [platform/lib], scopes: [read_repository], ttl: 2m}
`)
	d := pol.Evaluate(Request{Claims: claims(), Project: "platform/lib", Scopes: []string{"read_repository"}})
	if !d.Allowed || d.Rule != "first" || d.TTL != time.Minute {
		t.Fatalf("decision %+v, want rule first", d)
	}
	want := []Step{
		{Rule: "other-project", Failed: `match.project_path: "platform/app" does not match "x/y"`},
		{Rule: "first", Matched: true},
		{Rule: "second", Failed: `not reached: rule "first" matched first`},
	}
	if !slices.Equal(d.Trace, want) {
		t.Errorf("Trace = %+v\nwant    %+v", d.Trace, want)
	}
	// Deterministic: the same request gives the same decision every time.
	for range 20 {
		again := pol.Evaluate(Request{Claims: claims(), Project: "platform/lib", Scopes: []string{"read_repository"}})
		if again.Rule != d.Rule || !slices.Equal(again.Trace, d.Trace) {
			t.Fatalf("non-deterministic: %+v", again)
		}
	}
}

// Reason names the rule that got furthest: target or scope failures beat
// claim failures, scope beats target, and among claim failures the rule
// that matched more keys wins.
func TestEvaluateReasonPicksClosestRule(t *testing.T) {
	pol := mustParse(t, `rules:
  - name: wrong-project
    match: {project_path: x/y}
    allow: {projects: [platform/lib], scopes: [read_repository]}
  - name: wrong-ref
    match: {project_path: platform/app, ref: release}
    allow: {projects: [platform/lib], scopes: [read_repository]}
  - name: wrong-target
    match: {project_path: platform/app}
    allow: {projects: [platform/other], scopes: [read_repository]}
  - name: wrong-scope
    match: {project_path: platform/app}
    allow: {projects: [platform/lib], scopes: [read_registry]}
`)
	tests := []struct {
		name    string
		project string
		claims  map[string]string
		want    string
	}{
		{"scope failure wins", "platform/lib", claims(), `rule "wrong-scope": allow.scopes: read_repository not allowed (allowed: read_registry)`},
		{"target failure is next", "platform/zzz", claims(), `rule "wrong-target": allow.projects: platform/zzz not listed`},
		{"more matched keys wins among claim failures", "platform/lib", claims("project_path", "platform/app2"),
			`no rule matches this job's ID token (closest: rule "wrong-project": match.project_path: "platform/app2" does not match "x/y")`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := pol.Evaluate(Request{Claims: tt.claims, Project: tt.project, Scopes: []string{"read_repository"}})
			if d.Allowed || !strings.Contains(d.Reason, tt.want) {
				t.Errorf("Reason = %q\nwant it to contain %q", d.Reason, tt.want)
			}
		})
	}
	// wrong-ref matched one key before failing, so it beats wrong-project.
	d := pol.Evaluate(Request{Claims: claims("ref", "main"), Project: "platform/zzz", Scopes: []string{"read_repository"}})
	if !strings.Contains(d.Reason, `rule "wrong-target"`) {
		t.Errorf("Reason = %q", d.Reason)
	}
	pol2 := mustParse(t, `rules:
  - name: wrong-project
    match: {project_path: x/y}
    allow: {projects: [platform/lib], scopes: [read_repository]}
  - name: wrong-ref
    match: {project_path: platform/app, ref: release}
    allow: {projects: [platform/lib], scopes: [read_repository]}
`)
	d = pol2.Evaluate(Request{Claims: claims(), Project: "platform/lib", Scopes: []string{"read_repository"}})
	if want := `(closest: rule "wrong-ref": match.ref: "main" does not match "release")`; !strings.Contains(d.Reason, want) {
		t.Errorf("Reason = %q, want %q", d.Reason, want)
	}
}

func TestEvaluateNilPolicy(t *testing.T) {
	var p *Policy
	if d := p.Evaluate(Request{Project: "a/b", Scopes: []string{"read_repository"}}); d.Allowed {
		t.Error("nil policy allowed a request")
	}
}

// A request can never get more than it asked for, whatever the rule grants.
func TestEvaluateNeverWidens(t *testing.T) {
	pol := mustParse(t, `rules:
  - name: broad
    match: {project_path: "**"}
    allow: {projects: ["**"], scopes: [api, write_repository, read_repository, read_registry]}
`)
	for _, want := range [][]string{{"read_repository"}, {"read_registry", "read_repository"}, {"api"}} {
		d := pol.Evaluate(Request{Claims: claims(), Project: "a/b", Scopes: want})
		if !d.Allowed || !slices.Equal(d.Scopes, want) {
			t.Errorf("requested %v, decision %+v", want, d)
		}
	}
}

func TestEscapeGlobKeepsValuesLiteral(t *testing.T) {
	for _, v := range []string{"a/*", "{x,y}", "**", "[a-z]", `\`, `a\*`, "?", "a,b", "}{", "plain", "release/v1.2"} {
		p := "g/" + escapeGlob(v)
		if !matchGlob(p, "g/"+v) {
			t.Errorf("escaped %q does not match itself", v)
		}
		for _, other := range []string{"g/x", "g/a/b", "g/y", "g/a", "g/ab", "g/plain2"} {
			if other != "g/"+v && matchGlob(p, other) {
				t.Errorf("escaped %q matches %q", v, other)
			}
		}
	}
}

func ExamplePolicy_Evaluate() {
	pol, err := Parse([]byte(`rules:
  - name: app-reads-libs
    match: {project_path: platform/app, ref_protected: "true"}
    allow: {projects: ["platform/libs/*"], scopes: [read_repository]}
`), "policy.yaml", Options{})
	if err != nil {
		panic(err)
	}
	d := pol.Evaluate(Request{
		Claims:  map[string]string{"project_path": "platform/app", "ref_protected": "false"},
		Project: "platform/libs/a",
		Scopes:  []string{"read_repository"},
	})
	fmt.Println(d.Allowed, d.Reason)
	// Output: false no rule matches this job's ID token (closest: rule "app-reads-libs": match.ref_protected: "false" does not match "true")
}

// TestTemplateOfNonPathClaimIsOneSegment: a {{claim}} of a claim that is not a
// GitLab path (ref, environment, user_login, …) stands for one path segment.
// A branch "team-b/x" must not reach platform/team-b/x-cfg through
// "platform/{{ref}}-cfg"; path claims (project_path, namespace_path,
// job_*_path) keep matching as the paths they are.
func TestTemplateOfNonPathClaimIsOneSegment(t *testing.T) {
	pol := mustParse(t, `rules:
  - name: cfg
    match: {namespace_path: "**"}
    allow:
      projects: ["platform/{{ref}}-cfg", "envs/{{environment}}", "users/{{user_login}}/x", "{{namespace_path}}/tools", "{{project_path}}-cfg"]
      groups: ["bundles/{{ref}}"]
      scopes: [read_repository]
`)
	for _, tc := range []struct {
		name, project string
		claims        map[string]string
		allowed       bool
	}{
		{"one-segment ref", "platform/x-cfg", claims("ref", "x"), true},
		{"ref spanning segments", "platform/team-b/x-cfg", claims("ref", "team-b/x"), false},
		{"ref spanning into a group", "bundles/team-b/x/lib", claims("ref", "team-b/x"), false},
		{"one-segment ref into a group", "bundles/x/lib", claims("ref", "x"), true},
		{"environment spanning segments", "envs/review/app", claims("environment", "review/app"), false},
		{"one-segment environment", "envs/production", claims("environment", "production"), true},
		{"user_login spanning segments", "users/a/b/x", claims("user_login", "a/b"), false},
		{"namespace_path is a path", "teams/red/tools", claims("namespace_path", "teams/red"), true},
		{"project_path is a path", "platform/app-cfg", claims(), true},
	} {
		d := pol.Evaluate(Request{Claims: tc.claims, Project: tc.project, Scopes: []string{"read_repository"}})
		if d.Allowed != tc.allowed {
			t.Errorf("%s: %s allowed = %v, want %v (%s)", tc.name, tc.project, d.Allowed, tc.allowed, d.Reason)
		}
	}
}

// TestRequestProjectFollowsGitLabPaths: the request's project is checked by
// GitLab's rule (Gitlab::PathRegex), the one the daemon's resource parsing
// applies: no segment starts with '-', a group segment does not end in '.'.
func TestRequestProjectFollowsGitLabPaths(t *testing.T) {
	pol := mustParse(t, "rules:\n  - name: r\n    match: {project_path: platform/app}\n    allow: {projects: [\"**\"], scopes: [read_repository]}\n")
	for project, ok := range map[string]bool{
		"platform/.dotfiles": true, "platform/app.": true,
		"platform/-app": false, "platform./app": false, "platform/app.git": false, "platform/..": false,
	} {
		d := pol.Evaluate(Request{Claims: claims(), Project: project, Scopes: []string{"read_repository"}})
		if d.Allowed != ok {
			t.Errorf("%s: allowed %v, want %v (%s)", project, d.Allowed, ok, d.Reason)
		}
	}
}
