package policy

import (
	"strings"
	"testing"
	"time"
)

func TestWarnings(t *testing.T) {
	src := `rules:
  - name: long
    match: {project_path: platform/app}
    allow:
      projects: [platform/lib]
      scopes: [read_repository]
      ttl: 24h
      access_level: maintainer
  - name: everywhere
    match: {project_path: platform/app}
    allow:
      projects: ["**"]
      scopes: [read_repository, write_repository]
  - name: fine
    match: {project_path: platform/app}
    allow:
      projects: ["platform/**"]
      groups: ["*"]
      scopes: [read_repository]
      ttl: 1h
`
	p, err := Parse([]byte(src), "policy.yaml", Options{MaxTTL: 12 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Join(p.Warnings(), "\n")
	for _, want := range []string{
		`policy.yaml:7: rule "long": allow.ttl: warning: 24h is above max_ttl (12h): credentials get 12h`,
		`policy.yaml:8: rule "long": allow.access_level: warning: has no effect`,
		`policy.yaml:12: rule "everywhere": allow: warning: grants write_repository on "**"`,
	} {
		if !strings.Contains(got, want) {
			t.Errorf("missing %q in:\n%s", want, got)
		}
	}
	if strings.Contains(got, `"fine"`) {
		t.Errorf("a read-only wildcard or a short ttl warned:\n%s", got)
	}
	if n := len(p.Warnings()); n != 3 {
		t.Errorf("%d warnings, want 3:\n%s", n, got)
	}
	// Without max_ttl (a policy loaded on its own) there is nothing to compare.
	p, _ = Parse([]byte(src), "policy.yaml", Options{})
	if strings.Contains(strings.Join(p.Warnings(), "\n"), "max_ttl") {
		t.Error("ttl warning without a max_ttl")
	}
}
