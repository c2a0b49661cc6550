package exchange

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"gltoken.dev/gltoken/internal/ledger"
	"gltoken.dev/gltoken/internal/policy"
)

// severalPolicy grants registry reads on two groups (by two rules) and on
// single projects.
const severalPolicy = `
rules:
  - name: images
    match:
      project_path: platform/app
      ref_protected: "true"
    allow:
      groups: [platform/images]
      projects: [platform/lib, platform/app]
      scopes: [read_registry, write_registry]
      ttl: 1h
  - name: tools-images
    match:
      project_path: platform/app
    allow:
      groups: [platform/tools]
      scopes: [read_registry]
      ttl: 30m
`

const reg = "https://registry.example.com/"

func (f *fixture) exchangeAll(resources []string, scopes ...string) (*Issued, error) {
	return f.svc.Exchange(context.Background(), Request{RequestID: "r1", SubjectToken: "job-token", Resources: resources, Scopes: scopes})
}

// TestSeveralRegistryResourcesOneGroupCredential: one request names the
// registry repositories of several projects (a registry login, which names
// only the host). They are served by one group deploy token when one rule
// grants a group that holds them all, and that credential is the one each
// project alone would get: no extra mint.
func TestSeveralRegistryResourcesOneGroupCredential(t *testing.T) {
	var audit strings.Builder
	f := newFixtureWith(t, severalPolicy, slog.New(slog.NewJSONHandler(&audit, nil)))
	got, err := f.exchangeAll([]string{reg + "platform/images/base", reg + "platform/images/sub/builder"}, "read_registry")
	if err != nil {
		t.Fatal(err)
	}
	f.minter.mu.Lock()
	last := f.minter.last
	f.minter.mu.Unlock()
	if got.Kind != ledger.GroupDeployToken || last.OwnerPath != "platform/images" || f.minter.mints.Load() != 1 {
		t.Fatalf("minted %s on %s (%d mints), want one group deploy token on platform/images", got.Kind, last.OwnerPath, f.minter.mints.Load())
	}
	if life := got.ExpiresAt.Sub(f.clock.Now()); life > time.Hour {
		t.Fatalf("lifetime %s, above the rule's ttl", life)
	}
	rec, err := f.store.Get(context.Background(), got.LedgerID)
	if err != nil || rec.Resource != reg+"platform/images/base "+reg+"platform/images/sub/builder" {
		t.Fatalf("ledger record resource %q, %v", rec.Resource, err)
	}
	var ev map[string]any
	if err := json.Unmarshal([]byte(strings.Split(strings.TrimSpace(audit.String()), "\n")[0]), &ev); err != nil {
		t.Fatal(err)
	}
	if ev["target"] != "platform/images/base platform/images/sub/builder" || ev["outcome"] != "granted" || ev["rule"] != "images" {
		t.Fatalf("audit event %v", ev)
	}

	alone, err := f.exchangeAll([]string{reg + "platform/images/base"}, "read_registry")
	if err != nil || alone.LedgerID != got.LedgerID || f.minter.mints.Load() != 1 {
		t.Fatalf("one project of the group afterwards: %+v, %v (%d mints)", alone, err, f.minter.mints.Load())
	}
	// A repeated resource counts once: one project deploy token.
	one, err := f.exchangeAll([]string{reg + "platform/lib", reg + "platform/lib/"}, "read_registry")
	if err != nil || one.Kind != ledger.ProjectDeployToken {
		t.Fatalf("a repeated resource: %+v, %v", one, err)
	}
}

// TestSeveralResourcesRefusedUnlessOneCredential: deny by default. Every
// target must be allowed on its own, and all must come to the same
// credential; otherwise nothing is minted and the description says why.
func TestSeveralResourcesRefusedUnlessOneCredential(t *testing.T) {
	many := make([]string, MaxResources+1)
	for i := range many {
		many[i] = fmt.Sprintf("%splatform/images/p%d", reg, i)
	}
	tests := []struct {
		name      string
		resources []string
		scopes    []string
		code      string
		want      string
	}{
		{"two projects, two deploy tokens", []string{reg + "platform/images/base", reg + "platform/lib"}, nil, CodeInvalidTarget,
			`one credential cannot serve both platform/images/base and platform/lib: the first would get a group_deploy_token on platform/images (rule "images"), the second a project_deploy_token on platform/lib (rule "images")`},
		{"two groups of two rules", []string{reg + "platform/images/base", reg + "platform/tools/x"}, nil, CodeInvalidTarget,
			`the first would get a group_deploy_token on platform/images (rule "images"), the second a group_deploy_token on platform/tools (rule "tools-images")`},
		{"two projects", []string{reg + "platform/app", reg + "platform/lib"}, nil, CodeInvalidTarget,
			`one registry login serves several projects only as one group deploy token, of a group that one rule lists in allow.groups and that holds them all`},
		{"one denied", []string{reg + "platform/images/base", reg + "platform/secret"}, nil, CodeInvalidTarget,
			"denied by policy for platform/secret: no rule allows this request"},
		{"a scope denied for one", []string{reg + "platform/images/base", reg + "platform/tools/x"}, []string{"read_registry", "write_registry"}, CodeInvalidScope,
			"denied by policy for platform/tools/x: "},
		{"git repositories", []string{"https://gitlab.example.com/platform/lib.git", "https://gitlab.example.com/platform/app.git"}, []string{"read_repository"}, CodeInvalidRequest,
			"several resources in one request are for registry logins only"},
		{"a git repository among registry ones", []string{reg + "platform/images/base", "https://gitlab.example.com/platform/lib.git"}, nil, CodeInvalidRequest,
			"for registry logins only"},
		{"a bad one", []string{reg + "platform/images/base", reg + "platform/../secret"}, nil, CodeInvalidTarget, "resource "},
		{"too many", many, nil, CodeInvalidRequest, fmt.Sprintf("at most %d resources", MaxResources)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixtureWith(t, severalPolicy, nil)
			scopes := tt.scopes
			if scopes == nil {
				scopes = []string{"read_registry"}
			}
			_, err := f.exchangeAll(tt.resources, scopes...)
			var e *Error
			if !errors.As(err, &e) || e.Code != tt.code || !strings.Contains(e.Description, tt.want) {
				t.Fatalf("err = %v, want %s containing %q", err, tt.code, tt.want)
			}
			if n := f.minter.mints.Load(); n != 0 {
				t.Fatalf("a refused request minted %d credentials", n)
			}
		})
	}
}

// TestExplainSeveralResources: explain shows each target's decision and
// whether one credential serves them together, as an exchange decides.
func TestExplainSeveralResources(t *testing.T) {
	pol, err := policy.Parse([]byte(severalPolicy), "policy.yaml", policy.Options{})
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{GitLabURL: "https://gitlab.example.com", RegistryURL: "https://registry.example.com", MaxTTL: 12 * time.Hour}
	claims := map[string]string{"project_path": "platform/app", "ref": "main", "ref_protected": "true"}
	out, allowed, err := Explain(cfg, pol, claims, []string{reg + "platform/images/a", reg + "platform/images/b"}, []string{"read_registry"})
	if err != nil || !allowed || strings.Count(out, "decision:  ALLOW by rule \"images\"") != 2 ||
		!strings.Contains(out, "together:  ALLOW: one group_deploy_token on platform/images serves all 2\n") {
		t.Fatalf("allowed=%v err=%v\n%s", allowed, err, out)
	}
	out, allowed, _ = Explain(cfg, pol, claims, []string{reg + "platform/images/a", reg + "platform/lib"}, []string{"read_registry"})
	if allowed || !strings.Contains(out, "together:  DENY (invalid_target: one credential cannot serve both platform/images/a and platform/lib") {
		t.Fatalf("allowed=%v\n%s", allowed, out)
	}
	out, allowed, _ = Explain(cfg, pol, claims, []string{reg + "platform/images/a", reg + "platform/secret"}, []string{"read_registry"})
	if allowed || !strings.Contains(out, "resource:  "+reg+"platform/secret\n") || strings.Contains(out, "together:") {
		t.Fatalf("allowed=%v\n%s", allowed, out)
	}
}
