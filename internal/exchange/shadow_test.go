package exchange

import (
	"encoding/json"
	"log/slog"
	"slices"
	"strings"
	"testing"

	"gltoken.dev/gltoken/internal/policy"
)

// TestAuditShowsShadowVerdicts: a rule in mode shadow changes nothing that is
// handed out, and the audit event of every exchange it is about says what it
// would have decided.
func TestAuditShowsShadowVerdicts(t *testing.T) {
	f := newFixture(t)
	pol, err := policy.Parse([]byte(`rules:
  - name: narrower
    mode: shadow
    match: {project_path: platform/app, ref: main}
    allow: {projects: [platform/lib], scopes: [read_repository]}
  - name: app
    match: {project_path: platform/app}
    allow: {projects: ["platform/*"], scopes: [read_repository]}
`), "policy.yaml", policy.Options{})
	if err != nil {
		t.Fatal(err)
	}
	f.svc.policy = func() *policy.Policy { return pol }
	var logs strings.Builder
	f.svc.cfg.Audit = slog.New(slog.NewJSONHandler(&logs, nil))
	for _, res := range []string{"platform/lib", "platform/tools"} {
		if _, err := f.exchange("job-token", "https://gitlab.example.com/"+res+".git", "read_repository"); err != nil {
			t.Fatalf("%s: %v", res, err)
		}
	}
	var shadows [][]string
	for _, line := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		var ev struct {
			Rule   string   `json:"rule"`
			Shadow []string `json:"shadow"`
		}
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatal(err)
		}
		if ev.Rule != "app" {
			t.Errorf("audit rule %q, want app", ev.Rule)
		}
		shadows = append(shadows, ev.Shadow)
	}
	want := [][]string{{"narrower: would allow"}, {"narrower: would deny: allow.projects: platform/tools not listed"}}
	if !slices.EqualFunc(shadows, want, slices.Equal) {
		t.Errorf("audit shadow = %q, want %q", shadows, want)
	}
}
