package policy

import (
	"fmt"
	"strings"
	"testing"
)

// benchPolicy builds n rules in the shapes a real policy has: one per
// consuming project, with globs, lists and templates.
func benchPolicy(tb testing.TB, n int) *Policy {
	tb.Helper()
	var b strings.Builder
	b.WriteString("rules:\n")
	for i := range n {
		fmt.Fprintf(&b, `  - name: rule-%d
    match:
      project_path: team%d/app
      ref_protected: "true"
      ref: [main, "release/*"]
    allow:
      projects: ["team%d/libs/*", "shared/**", "{{namespace_path}}/cfg-%d"]
      groups: [team%d/tools]
      scopes: [read_repository, read_registry]
      ttl: 30m
`, i, i, i, i, i)
	}
	pol, err := Parse([]byte(b.String()), "bench.yaml", Options{GitLabURL: "https://gitlab.com"})
	if err != nil {
		tb.Fatal(err)
	}
	return pol
}

func BenchmarkEvaluate(b *testing.B) {
	pol := benchPolicy(b, 200)
	cases := []struct {
		name string
		req  Request
	}{
		{"grant-last-rule", Request{
			Claims:  claims("project_path", "team199/app", "namespace_path", "team199", "ref", "release/v2"),
			Project: "team199/cfg-199", Scopes: []string{"read_repository"},
		}},
		{"grant-group", Request{
			Claims:  claims("project_path", "team100/app", "namespace_path", "team100"),
			Project: "team100/tools/x/y", Scopes: []string{"read_registry"},
		}},
		{"deny-stranger", Request{
			Claims:  claims("project_path", "evil/app", "namespace_path", "evil"),
			Project: "team1/libs/a", Scopes: []string{"read_repository"},
		}},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				pol.Evaluate(c.req)
			}
		})
	}
}

func BenchmarkParse(b *testing.B) {
	benchPolicy(b, 1) // warm
	for b.Loop() {
		benchPolicy(b, 200)
	}
}
