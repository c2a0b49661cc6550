package policy

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

const gitlabCom = "https://gitlab.com"

// wantProblem is a problem a test expects: Line and Rule exactly, Field
// exactly, Message containing Contains.
type wantProblem struct {
	Line     int
	Rule     string
	Field    string
	Contains string
}

func parseErr(tb testing.TB, src string, opts Options) *LoadError {
	tb.Helper()
	pol, err := Parse([]byte(src), "policy.yaml", opts)
	if err == nil {
		tb.Fatalf("Parse succeeded (rules %v), want a *LoadError", pol.Rules())
	}
	var le *LoadError
	if !errors.As(err, &le) {
		tb.Fatalf("Parse error %T %v, want *LoadError", err, err)
	}
	if le.File != "policy.yaml" {
		tb.Errorf("LoadError.File = %q", le.File)
	}
	return le
}

func checkProblems(tb testing.TB, le *LoadError, want []wantProblem) {
	tb.Helper()
	if len(le.Problems) != len(want) {
		tb.Fatalf("got %d problems, want %d:\n%v", len(le.Problems), len(want), le)
	}
	for i, w := range want {
		g := le.Problems[i]
		if g.Line != w.Line || g.Rule != w.Rule || g.Field != w.Field || !strings.Contains(g.Message, w.Contains) {
			tb.Errorf("problem %d = %+v\nwant %+v", i, g, w)
		}
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name string
		opts Options
		src  string
		want []wantProblem
	}{
		{"empty file", Options{}, "", []wantProblem{{1, "", "", "empty policy"}}},
		{"comments only", Options{}, "# nothing\n", []wantProblem{{1, "", "", "empty policy"}}},
		{"syntax error", Options{}, "rules:\n\tx: 1\n", []wantProblem{{2, "", "", "invalid YAML: found character that cannot start any token"}}},
		{"two documents", Options{}, "rules: []\n---\nrules: []\n", []wantProblem{{2, "", "", "more than one YAML document"}}},
		{"top level not a mapping", Options{}, "- a\n", []wantProblem{{1, "", "", "must be a mapping"}}},
		{"unknown top-level key", Options{}, "rules: []\nrulez: []\n", []wantProblem{{2, "", "rulez", "unknown key"}}},
		{"missing rules", Options{}, "version: 1\n", []wantProblem{{1, "", "version", "unknown key"}, {1, "", "rules", "missing"}}},
		{"rules not a list", Options{}, "rules: {a: b}\n", []wantProblem{{1, "", "rules", "must be a list"}}},
		{"rule not a mapping", Options{}, "rules:\n  - just-a-string\n", []wantProblem{{2, "#1", "", "must be a mapping"}}},
		{"unknown rule key", Options{}, `rules:
  - name: r
    match: {project_path: a/b}
    allow: {projects: [a/c], scopes: [read_repository]}
    priority: 3
`, []wantProblem{{5, "r", "priority", "unknown key"}}},
		{"bad reuse", Options{}, `rules:
  - name: r
    match: {project_path: a/b}
    allow: {projects: [a/c], scopes: [read_repository]}
    reuse: pipeline
`, []wantProblem{{5, "r", "reuse", `want project (one credential for every job of the project) or job (one credential per job), not "pipeline"`}}},
		{"reuse not a scalar", Options{}, `rules:
  - name: r
    match: {project_path: a/b}
    allow: {projects: [a/c], scopes: [read_repository]}
    reuse: [job]
`, []wantProblem{{5, "r", "reuse", ""}}},
		{"reuse inside allow", Options{}, `rules:
  - name: r
    match: {project_path: a/b}
    allow: {projects: [a/c], scopes: [read_repository], reuse: job}
`, []wantProblem{{4, "r", "allow.reuse", "unknown key"}}},
		{"unknown allow key", Options{}, `rules:
  - name: r
    match: {project_path: a/b}
    allow:
      projects: [a/c]
      scopes: [read_repository]
      project: [a/d]
`, []wantProblem{{7, "r", "allow.project", "unknown key"}}},
		{"missing name", Options{}, `rules:
  - match: {project_path: a/b}
    allow: {projects: [a/c], scopes: [read_repository]}
`, []wantProblem{{2, "#1", "name", "missing"}}},
		{"empty name", Options{}, `rules:
  - name: ""
    match: {project_path: a/b}
    allow: {projects: [a/c], scopes: [read_repository]}
`, []wantProblem{{2, "#1", "name", "must not be empty"}}},
		{"duplicate rule names", Options{}, `rules:
  - name: r
    match: {project_path: a/b}
    allow: {projects: [a/c], scopes: [read_repository]}
  - name: r
    match: {project_path: a/b}
    allow: {projects: [a/d], scopes: [read_repository]}
`, []wantProblem{{5, "r", "name", "duplicate rule name (first used on line 2)"}}},
		{"duplicate key", Options{}, `rules:
  - name: r
    match: {project_path: a/b, project_path: a/c}
    allow: {projects: [a/c], scopes: [read_repository]}
`, []wantProblem{{3, "r", "match.project_path", "duplicate key"}}},
		{"missing match", Options{}, `rules:
  - name: r
    allow: {projects: [a/c], scopes: [read_repository]}
`, []wantProblem{{2, "r", "match", "missing"}}},
		{"empty match", Options{}, `rules:
  - name: r
    match: {}
    allow: {projects: [a/c], scopes: [read_repository]}
`, []wantProblem{{3, "r", "match", "must not be empty"}}},
		{"null match", Options{}, `rules:
  - name: r
    match:
    allow: {projects: [a/c], scopes: [read_repository]}
`, []wantProblem{{3, "r", "match", "must be a mapping, not null"}}},
		{"unknown claim", Options{}, `rules:
  - name: r
    match: {project_path: a/b, branch: main}
    allow: {projects: [a/c], scopes: [read_repository]}
`, []wantProblem{{3, "r", "match.branch", "unknown claim"}}},
		{"empty pattern list", Options{}, `rules:
  - name: r
    match: {project_path: []}
    allow: {projects: [a/c], scopes: [read_repository]}
`, []wantProblem{{3, "r", "match.project_path", "must not be empty"}}},
		{"bad glob in match", Options{}, `rules:
  - name: r
    match: {project_path: "a/[b"}
    allow: {projects: [a/c], scopes: [read_repository]}
`, []wantProblem{{3, "r", "match.project_path", "bad glob"}}},
		{"template in match", Options{}, `rules:
  - name: r
    match: {project_path: "{{namespace_path}}/x"}
    allow: {projects: [a/c], scopes: [read_repository]}
`, []wantProblem{{3, "r", "match.project_path", "templates are only allowed"}}},
		{"bool claim that can never match", Options{}, `rules:
  - name: r
    match: {project_path: a/b, ref_protected: "yes"}
    allow: {projects: [a/c], scopes: [read_repository]}
`, []wantProblem{{3, "r", "match.ref_protected", "can never match"}}},
		{"enum claim that can never match", Options{}, `rules:
  - name: r
    match: {project_path: a/b, ref_type: branches}
    allow: {projects: [a/c], scopes: [read_repository]}
`, []wantProblem{{3, "r", "match.ref_type", "can never match"}}},
		{"id claim that is not a number", Options{}, `rules:
  - name: r
    match: {project_id: abc}
    allow: {projects: [a/c], scopes: [read_repository]}
`, []wantProblem{{3, "r", "match.project_id", "decimal number"}}},
		{"path claim with leading slash", Options{}, `rules:
  - name: r
    match: {project_path: /a/b}
    allow: {projects: [a/c], scopes: [read_repository]}
`, []wantProblem{{3, "r", "match.project_path", "leading or trailing slash"}}},
		{"match value is a mapping", Options{}, `rules:
  - name: r
    match: {project_path: {a: b}}
    allow: {projects: [a/c], scopes: [read_repository]}
`, []wantProblem{{3, "r", "match.project_path", "must be a string or a list"}}},
		{"missing allow", Options{}, `rules:
  - name: r
    match: {project_path: a/b}
`, []wantProblem{{2, "r", "allow", "missing"}}},
		{"no projects and no groups", Options{}, `rules:
  - name: r
    match: {project_path: a/b}
    allow: {scopes: [read_repository]}
`, []wantProblem{{4, "r", "allow", "no projects and no groups"}}},
		{"empty projects", Options{}, `rules:
  - name: r
    match: {project_path: a/b}
    allow: {projects: [], scopes: [read_repository]}
`, []wantProblem{{4, "r", "allow.projects", "must not be empty"}}},
		{"missing scopes", Options{}, `rules:
  - name: r
    match: {project_path: a/b}
    allow: {projects: [a/c]}
`, []wantProblem{{4, "r", "allow.scopes", "missing"}}},
		{"empty scopes", Options{}, `rules:
  - name: r
    match: {project_path: a/b}
    allow: {projects: [a/c], scopes: []}
`, []wantProblem{{4, "r", "allow.scopes", "must not be empty"}}},
		{"unknown scope", Options{}, `rules:
  - name: r
    match: {project_path: a/b}
    allow:
      projects: [a/c]
      scopes: [read_repository, sudo]
`, []wantProblem{{6, "r", "allow.scopes", `unknown scope "sudo"`}}},
		{"virtual registry scope is not offered", Options{}, `rules:
  - name: r
    match: {project_path: a/b}
    allow:
      projects: [a/c]
      scopes: [read_virtual_registry]
`, []wantProblem{{6, "r", "allow.scopes", "unknown scope"}}},
		{"bad glob in projects", Options{}, `rules:
  - name: r
    match: {project_path: a/b}
    allow: {projects: ["a/{c"], scopes: [read_repository]}
`, []wantProblem{{4, "r", "allow.projects", "bad glob"}}},
		{"bad glob in groups", Options{}, `rules:
  - name: r
    match: {project_path: a/b}
    allow: {groups: ["a/[]"], scopes: [read_repository]}
`, []wantProblem{{4, "r", "allow.groups", "bad glob"}}},
		{"project with .git", Options{}, `rules:
  - name: r
    match: {project_path: a/b}
    allow: {projects: [a/c.git], scopes: [read_repository]}
`, []wantProblem{{4, "r", "allow.projects", "without .git"}}},
		{"project with leading slash", Options{}, `rules:
  - name: r
    match: {project_path: a/b}
    allow: {projects: [/a/c], scopes: [read_repository]}
`, []wantProblem{{4, "r", "allow.projects", "leading or trailing slash"}}},
		{"project as URL", Options{}, `rules:
  - name: r
    match: {project_path: a/b}
    allow: {projects: ["https://gitlab.example.com/a/c"], scopes: [read_repository]}
`, []wantProblem{{4, "r", "allow.projects", "not a URL"}}},
		{"unknown claim in template", Options{}, `rules:
  - name: r
    match: {project_path: a/b}
    allow: {projects: ["{{ branch }}/x"], scopes: [read_repository]}
`, []wantProblem{{4, "r", "allow.projects", `unknown claim "branch"`}}},
		{"unclosed template", Options{}, `rules:
  - name: r
    match: {project_path: a/b}
    allow: {projects: ["{{namespace_path/x"], scopes: [read_repository]}
`, []wantProblem{{4, "r", "allow.projects", "unclosed template"}}},
		{"template inside alternation", Options{}, `rules:
  - name: r
    match: {project_path: a/b}
    allow: {projects: ["a/{x,{{ref}}}"], scopes: [read_repository]}
`, []wantProblem{{4, "r", "allow.projects", "inside [...] or {...}"}}},
		{"template inside class", Options{}, `rules:
  - name: r
    match: {project_path: a/b}
    allow: {projects: ["a/[{{ref}}]"], scopes: [read_repository]}
`, []wantProblem{{4, "r", "allow.projects", "inside [...] or {...}"}}},
		{"bad ttl", Options{}, `rules:
  - name: r
    match: {project_path: a/b}
    allow: {projects: [a/c], scopes: [read_repository], ttl: 1d}
`, []wantProblem{{4, "r", "allow.ttl", "bad duration"}}},
		{"ttl without unit", Options{}, `rules:
  - name: r
    match: {project_path: a/b}
    allow: {projects: [a/c], scopes: [read_repository], ttl: 3600}
`, []wantProblem{{4, "r", "allow.ttl", "bad duration"}}},
		{"non-positive ttl", Options{}, `rules:
  - name: r
    match: {project_path: a/b}
    allow: {projects: [a/c], scopes: [read_repository], ttl: -5m}
`, []wantProblem{{4, "r", "allow.ttl", "must be positive"}}},
		{"bad access level", Options{}, `rules:
  - name: r
    match: {project_path: a/b}
    allow: {projects: [a/c], scopes: [write_repository], access_level: owner}
`, []wantProblem{{4, "r", "allow.access_level", "unknown access level"}}},
		{"bad numeric access level", Options{}, `rules:
  - name: r
    match: {project_path: a/b}
    allow: {projects: [a/c], scopes: [write_repository], access_level: 50}
`, []wantProblem{{4, "r", "allow.access_level", "unknown access level"}}},
		{"alias", Options{}, `rules:
  - name: r
    match: {project_path: &p a/b}
    allow: {projects: [*p], scopes: [read_repository]}
`, []wantProblem{{4, "r", "allow.projects", "aliases are not supported"}}},
		{"merge key", Options{}, `base: &b {scopes: [read_repository]}
rules:
  - name: r
    match: {project_path: a/b}
    allow: {<<: *b, projects: [a/c]}
`, []wantProblem{{1, "", "base", "unknown key"}, {5, "r", "allow", "merge keys are not supported"}, {5, "r", "allow.scopes", "missing"}}},

		// The gitlab.com guard.
		{"gitlab.com: match pins nothing", Options{GitLabURL: gitlabCom}, `rules:
  - name: r
    match: {ref_protected: "true"}
    allow: {projects: [acme/lib], scopes: [read_repository]}
`, []wantProblem{{3, "r", "match", "must pin a namespace or project"}}},
		{"gitlab.com: wildcard namespace", Options{GitLabURL: gitlabCom + "/"}, `rules:
  - name: r
    match: {namespace_path: "*"}
    allow: {projects: [acme/lib], scopes: [read_repository]}
`, []wantProblem{{3, "r", "match", "must pin"}}},
		{"gitlab.com: doublestar project path", Options{GitLabURL: "HTTPS://GitLab.com"}, `rules:
  - name: r
    match: {project_path: "**/app"}
    allow: {projects: [acme/lib], scopes: [read_repository]}
`, []wantProblem{{3, "r", "match", "must pin"}}},
		{"gitlab.com: one wildcard glob of a list", Options{GitLabURL: gitlabCom}, `rules:
  - name: r
    match: {project_path: [acme/app, "{acme,evil}/app"]}
    allow: {projects: [acme/lib], scopes: [read_repository]}
`, []wantProblem{{3, "r", "match", "must pin"}}},
		{"gitlab.com: wildcard project id", Options{GitLabURL: gitlabCom}, `rules:
  - name: r
    match: {project_id: "12*"}
    allow: {projects: [acme/lib], scopes: [read_repository]}
`, []wantProblem{{3, "r", "match", "must pin"}}},
		{"gitlab.com: sub does not pin", Options{GitLabURL: gitlabCom}, `rules:
  - name: r
    match: {sub: "project_path:acme/app:*"}
    allow: {projects: [acme/lib], scopes: [read_repository]}
`, []wantProblem{{3, "r", "match", "must pin"}}},
		{"gitlab.com: wildcard first segment in projects and groups", Options{GitLabURL: gitlabCom}, `rules:
  - name: r
    match: {project_path: acme/app}
    allow:
      projects: [acme/lib, "*/lib", "**"]
      groups: ["{acme,evil}"]
      scopes: [read_repository]
`, []wantProblem{
			{5, "r", "allow.projects", "must start with a literal top-level group"},
			{5, "r", "allow.projects", "must start with a literal top-level group"},
			{6, "r", "allow.groups", "must start with a literal top-level group"},
		}},
		{"gitlab.com: template of a job-chosen claim first", Options{GitLabURL: gitlabCom}, `rules:
  - name: r
    match: {project_path: acme/app}
    allow:
      projects: ["{{ref}}/lib", "{{namespace_path}}*/x", "acme{{ref}}/x", "{{namespace_path}}-x", "{{project_path}}-config", "{{namespace_path}}/x"]
      scopes: [read_repository]
`, []wantProblem{
			{5, "r", "allow.projects", "must start with a literal"},
			{5, "r", "allow.projects", "must start with a literal"},
			{5, "r", "allow.projects", "must start with a literal"},
			{5, "r", "allow.projects", "must start with a literal"},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkProblems(t, parseErr(t, tt.src, tt.opts), tt.want)
		})
	}
}

// TestParseListsEveryProblem checks that one bad file yields all its
// problems, in order, each with its line, and that Error prints one a line.
func TestParseListsEveryProblem(t *testing.T) {
	src := `rules:
  - name: good
    match: {project_path: a/b}
    allow: {projects: [a/c], scopes: [read_repository]}
  - name: bad
    match:
      project_path: a/b
      colour: blue
    allow:
      projects: ["a/[x"]
      scopes: [read_repository, sudo]
      ttl: forever
      access_level: god
  - match: {}
    allow: {scopes: [read_repository]}
  - name: good
    match: {project_path: a/b}
    allow: {projects: [a/c], scopes: [read_repository]}
extra: 1
`
	le := parseErr(t, src, Options{})
	want := []wantProblem{
		{8, "bad", "match.colour", "unknown claim"},
		{10, "bad", "allow.projects", "bad glob"},
		{11, "bad", "allow.scopes", "unknown scope"},
		{12, "bad", "allow.ttl", "bad duration"},
		{13, "bad", "allow.access_level", "unknown access level"},
		{14, "#3", "name", "missing"},
		{14, "#3", "match", "must not be empty"},
		{15, "#3", "allow", "no projects and no groups"},
		{16, "good", "name", "duplicate rule name (first used on line 2)"},
		{19, "", "extra", "unknown key"},
	}
	checkProblems(t, le, want)
	lines := strings.Split(le.Error(), "\n")
	if len(lines) != len(want) {
		t.Fatalf("Error() has %d lines, want %d:\n%s", len(lines), len(want), le.Error())
	}
	for i, line := range []string{
		`policy.yaml:8: rule "bad": match.colour: unknown claim`,
		`policy.yaml:10: rule "bad": allow.projects: bad glob "a/[x"`,
	} {
		if !strings.HasPrefix(lines[i], line) {
			t.Errorf("line %d = %q, want prefix %q", i, lines[i], line)
		}
	}
	if got, want := lines[9], `policy.yaml:19: extra: unknown key (want rules)`; got != want {
		t.Errorf("last line = %q, want %q", got, want)
	}
}

func TestParseValid(t *testing.T) {
	src := `rules:
  - name: defaults
    match: {project_path: a/b}
    allow: {projects: a/c, scopes: read_repository}
  - name: explicit
    match:
      project_id: 42
      ref_protected: true
      ref_type: "*"
    allow:
      projects: ["{{ namespace_path }}/x"]
      groups: [a/tools]
      scopes: [write_repository, read_api]
      ttl: 90s
      access_level: 20
  - name: named-level
    match: {namespace_path: a}
    allow: {projects: [a/c], scopes: [api], access_level: Maintainer, acknowledge_api_maintainer: true}
`
	pol, err := Parse([]byte(src), "p.yaml", Options{GitLabURL: "https://gitlab.com"})
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(pol.Rules(), ","); got != "defaults,explicit,named-level" {
		t.Errorf("Rules() = %s", got)
	}
	r := pol.rules
	if r[0].ttl != time.Hour || r[0].accessLevel != 30 {
		t.Errorf("defaults: ttl %v level %d, want 1h 30", r[0].ttl, r[0].accessLevel)
	}
	if r[1].ttl != 90*time.Second || r[1].accessLevel != 20 {
		t.Errorf("explicit: ttl %v level %d, want 90s 20", r[1].ttl, r[1].accessLevel)
	}
	if r[2].accessLevel != 40 {
		t.Errorf("named-level: level %d, want 40", r[2].accessLevel)
	}
	if got := pol.Rules(); &got[0] == &pol.names[0] {
		t.Error("Rules() must return a copy")
	}
}

func TestParseNoRules(t *testing.T) {
	pol, err := Parse([]byte("rules: []\n"), "p.yaml", Options{})
	if err != nil {
		t.Fatal(err)
	}
	d := pol.Evaluate(Request{Claims: map[string]string{}, Project: "a/b", Scopes: []string{"read_repository"}})
	if d.Allowed || !strings.Contains(d.Reason, "no rules") || len(d.Trace) != 0 {
		t.Errorf("decision %+v, want a denial saying there are no rules", d)
	}
}

// The shipped example loads, also under the gitlab.com guard, and grants
// what it says.
func TestLoadExample(t *testing.T) {
	for _, url := range []string{"https://gitlab.example.com", gitlabCom} {
		pol, err := Load(filepath.Join("testdata", "policy.yaml"), Options{GitLabURL: url})
		if err != nil {
			t.Fatalf("%s: %v", url, err)
		}
		if got := strings.Join(pol.Rules(), ","); got != "app-reads-libs,release-pushes-charts,team-reads-own-namespace" {
			t.Errorf("Rules() = %s", got)
		}
		d := pol.Evaluate(Request{
			Claims:  map[string]string{"project_path": "platform/app", "namespace_path": "platform", "ref_protected": "true"},
			Project: "platform/shared", Scopes: []string{"read_registry"},
		})
		if !d.Allowed || d.Rule != "app-reads-libs" {
			t.Errorf("%s: decision %+v", url, d)
		}
	}
}

func TestLoadIOErrors(t *testing.T) {
	dir := t.TempDir()
	_, err := Load(filepath.Join(dir, "missing.yaml"), Options{})
	var le *LoadError
	if !errors.Is(err, os.ErrNotExist) || errors.As(err, &le) {
		t.Errorf("missing file: %v, want a wrapped os.ErrNotExist", err)
	}

	big := filepath.Join(dir, "big.yaml")
	data := []byte("rules: []\n" + strings.Repeat("#", MaxFileSize))
	if err := os.WriteFile(big, data, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = Load(big, Options{})
	if !errors.As(err, &le) || !strings.Contains(le.Problems[0].Message, "larger than") {
		t.Errorf("big file: %v, want a LoadError about size", err)
	}
	if !strings.HasPrefix(err.Error(), big+": file is larger") {
		t.Errorf("big file error = %q", err)
	}
}

func TestSharedInstance(t *testing.T) {
	for url, want := range map[string]bool{
		"https://gitlab.com": true, "https://gitlab.com/": true, "HTTPS://GITLAB.COM": true, "gitlab.com": true,
		"https://gitlab.com.": true, "http://gitlab.com:443/": true, " https://gitlab.com ": true,
		"": false, "https://gitlab.example.com": false, "https://notgitlab.com": false, "https://gitlab.com.evil.org": false,
	} {
		if got := (Options{GitLabURL: url}).sharedInstance(); got != want {
			t.Errorf("sharedInstance(%q) = %v, want %v", url, got, want)
		}
	}
}

func TestAccessLevel(t *testing.T) {
	tests := []struct {
		in   string
		want int
		ok   bool
	}{
		{"guest", 10, true}, {"reporter", 20, true}, {"developer", 30, true}, {"maintainer", 40, true},
		{"Developer", 30, true}, {"30", 30, true}, {"40", 40, true},
		{"owner", 0, false}, {"50", 0, false}, {"15", 0, false}, {"", 0, false}, {"-10", 0, false},
	}
	for _, tt := range tests {
		got, ok := AccessLevel(tt.in)
		if got != tt.want || ok != tt.ok {
			t.Errorf("AccessLevel(%q) = %d, %v; want %d, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
}

// TestKnownClaims: the claims a rule may use come from the one catalogue
// (idclaims) and are exactly GitLab's scalar claims.
func TestKnownClaims(t *testing.T) {
	want := []string{
		"ci_config_ref_uri", "ci_config_sha", "deployment_tier", "environment", "environment_action",
		"environment_protected", "iss", "job_id", "job_namespace_id", "job_namespace_path",
		"job_project_id", "job_project_path", "namespace_id", "namespace_path", "pipeline_id",
		"pipeline_source", "project_id", "project_path", "project_visibility", "ref", "ref_path",
		"ref_protected", "ref_type", "runner_environment", "runner_id", "sha", "sub", "user_access_level",
		"user_email", "user_id", "user_login",
	}
	if !slices.Equal(KnownClaims, want) {
		t.Errorf("KnownClaims = %v\nwant %v", KnownClaims, want)
	}
	for _, c := range want {
		if _, ok := matchableClaim(c); !ok {
			t.Errorf("%s is not matchable", c)
		}
	}
	for _, c := range []string{"aud", "exp", "jti", "groups_direct", "user_identities", "target_audience", "nope"} {
		if _, ok := matchableClaim(c); ok {
			t.Errorf("%s is matchable", c)
		}
	}
}

func TestParseTemplate(t *testing.T) {
	tests := []struct {
		in      string
		want    []part
		wantErr string
	}{
		{"a/b", nil, ""},
		{"{{ref}}", []part{{claim: "ref"}}, ""},
		{"a/{{ ref }}/b", []part{{lit: "a/"}, {claim: "ref"}, {lit: "/b"}}, ""},
		{"{a,b}/[xy]-{{ref}}", []part{{lit: "{a,b}/[xy]-"}, {claim: "ref"}}, ""},
		{`a\[/{{ref}}`, []part{{lit: `a\[/`}, {claim: "ref"}}, ""},
		{"[!}]/{{ref}}", []part{{lit: "[!}]/"}, {claim: "ref"}}, ""},
		{"{{namespace_path}}/{{ref}}", []part{{claim: "namespace_path", path: true}, {lit: "/"}, {claim: "ref"}}, ""},
		{"{a,{{ref}}}", nil, "inside"},
		{"[{{ref}}]", nil, "inside"},
		{"{{nope}}", nil, "unknown claim"},
		{"{{ref", nil, "unclosed"},
	}
	for _, tt := range tests {
		got, err := parseTemplate(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("parseTemplate(%q) error %v, want %q", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil || !slices.Equal(got, tt.want) {
			t.Errorf("parseTemplate(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
		}
	}
}

func TestParseOddYAML(t *testing.T) {
	long := strings.Repeat("n", 129)
	tests := []struct {
		name string
		src  string
		want []wantProblem
	}{
		{"name too long", "rules:\n  - name: " + long + "\n    match: {project_path: a/b}\n    allow: {projects: [a/c], scopes: [api]}\n",
			[]wantProblem{{2, "#1", "name", "at most 128 printable"}}},
		{"name with control character", "rules:\n  - name: \"a\\tb\"\n    match: {project_path: a/b}\n    allow: {projects: [a/c], scopes: [api]}\n",
			[]wantProblem{{2, "#1", "name", "printable"}}},
		{"complex key", "rules:\n  - name: r\n    match: {? [a]: b, project_path: a/b}\n    allow: {projects: [a/c], scopes: [api]}\n",
			[]wantProblem{{3, "r", "match", "keys must be plain strings"}}},
		{"null pattern", "rules:\n  - name: r\n    match: {project_path: ~}\n    allow: {projects: [a/c], scopes: [api]}\n",
			[]wantProblem{{3, "r", "match.project_path", "must be a string or a list of strings, not null"}}},
		{"null in a list", "rules:\n  - name: r\n    match: {project_path: [a/b, ~]}\n    allow: {projects: [a/c], scopes: [api]}\n",
			[]wantProblem{{3, "r", "match.project_path", "missing value"}}},
		{"list in a list", "rules:\n  - name: r\n    match: {project_path: a/b}\n    allow: {projects: [[a/c]], scopes: [api]}\n",
			[]wantProblem{{4, "r", "allow.projects", "must be a string, not a list"}}},
		{"allow is a list", "rules:\n  - name: r\n    match: {project_path: a/b}\n    allow: [a/c]\n",
			[]wantProblem{{4, "r", "allow", "must be a mapping, not a list"}}},
		{"rule is an alias", "rules:\n  - &r {name: r, match: {project_path: a/b}, allow: {projects: [a/c], scopes: [api]}}\n  - *r\n",
			[]wantProblem{{3, "#2", "", "aliases are not supported"}}},
		{"rules is an alias", "x: &r []\nrules: *r\n",
			[]wantProblem{{1, "", "x", "unknown key"}, {2, "", "rules", "aliases are not supported"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkProblems(t, parseErr(t, tt.src, Options{}), tt.want)
		})
	}
}

func TestParseReuse(t *testing.T) {
	pol, err := Parse([]byte(`rules:
  - name: shared
    match: {project_path: a/b}
    allow: {projects: [a/c], scopes: [read_repository]}
  - name: explicit
    reuse: project
    match: {project_path: a/b}
    allow: {projects: [a/d], scopes: [read_repository]}
  - name: own
    reuse: job
    match: {project_path: a/b}
    allow: {projects: [a/e], scopes: [read_repository]}
`), "p.yaml", Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		project string
		want    Reuse
	}{{"a/c", ReuseProject}, {"a/d", ReuseProject}, {"a/e", ReuseJob}} {
		d := pol.Evaluate(Request{Claims: map[string]string{"project_path": "a/b"}, Project: tc.project, Scopes: []string{"read_repository"}})
		if !d.Allowed || d.Reuse != tc.want {
			t.Errorf("%s: allowed %v, reuse %q; want %q", tc.project, d.Allowed, d.Reuse, tc.want)
		}
		if fp, ok := pol.RuleFingerprint(d.Rule); !ok || fp != d.RuleFingerprint || len(fp) != 64 {
			t.Errorf("%s: RuleFingerprint(%s) = %q, %v; decision says %q", tc.project, d.Rule, fp, ok, d.RuleFingerprint)
		}
	}
	if _, ok := pol.RuleFingerprint("absent"); ok {
		t.Error("RuleFingerprint of an absent rule")
	}
}

// TestRuleFingerprint: a rule's fingerprint follows what it grants, not how
// the file is laid out.
func TestRuleFingerprint(t *testing.T) {
	const base = `rules:
  - name: r
    match: {project_path: a/b}
    allow: {projects: [a/c], scopes: [read_repository], ttl: 10h, access_level: maintainer}
`
	fp := func(src string) string {
		t.Helper()
		pol, err := Parse([]byte(src), "p.yaml", Options{})
		if err != nil {
			t.Fatal(err)
		}
		f, ok := pol.RuleFingerprint("r")
		if !ok {
			t.Fatal("no rule r")
		}
		return f
	}
	want := fp(base)
	same := []string{
		"# a comment\n\n" + base,
		`rules:
  - name: r   # the rule
    match:
      project_path: a/b
    allow:
      projects:
        - a/c
      scopes: [read_repository]
      ttl: 10h
      access_level: maintainer
`,
		`rules:
  - name: other
    match: {project_path: x/y}
    allow: {projects: [x/z], scopes: [read_repository]}
` + base[len("rules:\n"):],
	}
	for i, src := range same {
		if got := fp(src); got != want {
			t.Errorf("layout %d changed the fingerprint", i)
		}
	}
	changed := map[string]string{
		"ttl":          strings.Replace(base, "ttl: 10h", "ttl: 15m", 1),
		"access level": strings.Replace(base, "maintainer", "developer", 1),
		"target":       strings.Replace(base, "[a/c]", "[a/c, a/d]", 1),
		"match":        strings.Replace(base, "project_path: a/b", "project_path: a/b, ref_protected: true", 1),
		"reuse":        strings.Replace(base, "  - name: r\n", "  - name: r\n    reuse: job\n", 1),
	}
	for what, src := range changed {
		if fp(src) == want {
			t.Errorf("changing the %s kept the fingerprint", what)
		}
	}
}

// TestScopeCatalogue: one catalogue says which scopes a deploy token carries
// (the exchange mints by it) and which apply to a registry; GitLab's
// virtual-registry scopes are not offered anywhere.
func TestScopeCatalogue(t *testing.T) {
	var deploy, registry []string
	for _, s := range KnownScopes {
		if DeployTokenScope(s) {
			deploy = append(deploy, s)
		}
		if RegistryScope(s) {
			registry = append(registry, s)
		}
	}
	if want := []string{"read_repository", "read_registry", "write_registry", "read_package_registry", "write_package_registry"}; !slices.Equal(deploy, want) {
		t.Errorf("deploy-token scopes %v, want %v", deploy, want)
	}
	if want := []string{"read_registry", "write_registry"}; !slices.Equal(registry, want) {
		t.Errorf("registry scopes %v, want %v", registry, want)
	}
	for _, s := range []string{"read_virtual_registry", "write_virtual_registry", "self_rotate", ""} {
		if KnownScope(s) || DeployTokenScope(s) || RegistryScope(s) {
			t.Errorf("%q is offered", s)
		}
	}
}
