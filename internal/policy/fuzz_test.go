package policy

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func FuzzParse(f *testing.F) {
	if data, err := os.ReadFile(filepath.Join("testdata", "policy.yaml")); err == nil {
		f.Add(data)
	} else {
		f.Fatal(err)
	}
	f.Add([]byte(matrixPolicy))
	for _, s := range []string{
		"", "rules: []", "rules:\n  - name: a\n", "rules: {a: b}", "- a", "rules:\n\tx: 1\n",
		"rules:\n  - name: r\n    match: {project_path: &p a/b}\n    allow: {projects: [*p], scopes: [read_repository]}\n",
		"rules:\n  - name: r\n    match: {project_path: \"a/[b\"}\n    allow: {projects: [\"{{ref}}/{x\"], scopes: [api], ttl: -1s}\n",
		"a: &a [*a]", "rules: !!binary aGVsbG8=", "{{{{", "rules:\n - {name: x, match: {ref: [[]]}, allow: {groups: [{}]}}",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, opts := range []Options{{}, {GitLabURL: "https://gitlab.com"}} {
			pol, err := Parse(data, "fuzz.yaml", opts)
			if err != nil {
				var le *LoadError
				if !errors.As(err, &le) || len(le.Problems) == 0 {
					t.Fatalf("error %T %v, want a *LoadError with problems", err, err)
				}
				_ = le.Error()
				continue
			}
			for _, req := range []Request{
				{Claims: claims(), Project: "platform/lib", Scopes: []string{"read_repository"}},
				{Claims: claims("ref", "{a,*}/**", "environment", "[x]"), Project: "a/b/c", Scopes: []string{"api", "write_repository"}},
				{Claims: nil, Project: "x/y", Scopes: []string{"read_registry"}},
			} {
				d := pol.Evaluate(req)
				if len(d.Trace) != len(pol.Rules()) {
					t.Fatalf("trace has %d steps for %d rules", len(d.Trace), len(pol.Rules()))
				}
				if !d.Allowed && d.Reason == "" {
					t.Fatal("denial without a reason")
				}
			}
		}
	})
}

// FuzzTemplateLiteral checks that a claim value substituted into a template
// matches exactly itself: "tools/{{ref}}" allows project q only when q is
// "tools/" + ref.
func FuzzTemplateLiteral(f *testing.F) {
	pol := mustParse(f, `rules:
  - name: exact
    match: {project_path: tools/app}
    allow: {projects: ["tools/{{ref}}"], groups: ["grp/{{ref}}"], scopes: [read_repository]}
`)
	for _, s := range [][2]string{
		{"main", "tools/main"}, {"a/*", "tools/a/b"}, {"{x,y}", "tools/x"}, {"**", "tools/a/b"},
		{"[a-z]", "tools/a"}, {`\`, "tools/a"}, {"*", "grp/a/b"}, {"a,b", "tools/b"},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, ref, project string) {
		d := pol.Evaluate(Request{Claims: claims("project_path", "tools/app", "ref", ref), Project: project, Scopes: []string{"read_repository"}})
		if !d.Allowed {
			return
		}
		if ref == "" {
			t.Fatalf("empty ref allowed %q", project)
		}
		if strings.Contains(ref, "/") {
			t.Fatalf("ref %q spans path segments: allowed %q", ref, project)
		}
		if project != "tools/"+ref && (len(project) <= len("grp/"+ref) || project[:len("grp/"+ref)+1] != "grp/"+ref+"/") {
			t.Fatalf("ref %q allowed project %q", ref, project)
		}
		if d.Group != "" && d.Group != "grp/"+ref {
			t.Fatalf("ref %q gave group %q", ref, d.Group)
		}
	})
}
