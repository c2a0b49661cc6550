package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func runCmd(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = run(context.Background(), args, strings.NewReader(""), &out, &errb)
	return code, out.String(), errb.String()
}

// contribConfig is contrib/exchanged.yaml with its paths pointed into dir,
// next to a copy of contrib/policy.yaml and a service token file.
func contribConfig(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	cfg, err := os.ReadFile("../../contrib/exchanged.yaml")
	if err != nil {
		t.Fatal(err)
	}
	pol, err := os.ReadFile("../../contrib/policy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	// As under systemd: the LoadCredential= copy in $CREDENTIALS_DIRECTORY is
	// dir/gitlab-token; the writable token file is taken from it.
	t.Setenv("CREDENTIALS_DIRECTORY", dir)
	c := strings.ReplaceAll(string(cfg), "/var/lib/gltoken/gitlab-token", filepath.Join(dir, "state-token"))
	c = strings.ReplaceAll(c, "/var/lib/gltoken/state.db", filepath.Join(dir, "state.db"))
	for name, data := range map[string]string{"exchanged.yaml": c, "policy.yaml": string(pol), "gitlab-token": "glpat-example\n"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return filepath.Join(dir, "exchanged.yaml")
}

func TestCheckShippedExamples(t *testing.T) {
	cfg := contribConfig(t)
	code, out, errs := runCmd(t, "check", "--config", cfg)
	if code != 0 {
		t.Fatalf("check exit %d:\n%s%s", code, out, errs)
	}
	if !strings.Contains(out, "app-reads-libs") || !strings.Contains(out, ": ok") {
		t.Fatalf("check output:\n%s", out)
	}
}

func TestCheckNamesEveryProblem(t *testing.T) {
	cfg := contribConfig(t)
	dir := filepath.Dir(cfg)
	bad := `rules:
  - name: dup
    match: {project_path: platform/app, colour: blue}
    allow: {projects: [platform/lib], scopes: [read_repository, sudo]}
  - name: dup
    match: {}
    allow: {projects: [platform/lib], scopes: [read_repository]}
`
	if err := os.WriteFile(filepath.Join(dir, "policy.yaml"), []byte(bad), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(dir, "gitlab-token"), 0o644); err != nil {
		t.Fatal(err)
	}
	code, _, errs := runCmd(t, "check", "--config", cfg)
	if code != 1 {
		t.Fatalf("check exit %d, want 1", code)
	}
	for _, want := range []string{"policy.yaml:3", "colour", "sudo", "duplicate", "match", "must be 0600 or stricter"} {
		if !strings.Contains(errs, want) {
			t.Errorf("check output does not mention %q:\n%s", want, errs)
		}
	}
	if strings.Contains(errs, "glpat-example") {
		t.Fatal("check printed the service token")
	}
}

// TestCheckWarnsAndPasses: what is legal but probably not meant is printed,
// and check still succeeds.
func TestCheckWarnsAndPasses(t *testing.T) {
	cfg := contribConfig(t)
	pol := `rules:
  - name: long-lived
    match: {project_path: platform/app}
    allow: {projects: [platform/lib], scopes: [read_repository], ttl: 48h, access_level: maintainer}
`
	if err := os.WriteFile(filepath.Join(filepath.Dir(cfg), "policy.yaml"), []byte(pol), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, errs := runCmd(t, "check", "--config", cfg)
	if code != 0 || !strings.Contains(out, ": ok") {
		t.Fatalf("check exit %d:\n%s%s", code, out, errs)
	}
	for _, want := range []string{"policy.yaml:4: rule \"long-lived\": allow.ttl: warning: 48h is above max_ttl (12h)", "allow.access_level: warning: has no effect"} {
		if !strings.Contains(errs, want) {
			t.Errorf("check does not warn %q:\n%s", want, errs)
		}
	}
}

// TestCheckConfigProblems: the configuration's problems come with line and key.
func TestCheckConfigProblems(t *testing.T) {
	cfg := contribConfig(t)
	data, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	bad := strings.Replace(string(data), "audience:", "audeince:", 1)
	bad = strings.Replace(bad, "max_ttl: 12h", "max_ttl: 100d", 1)
	if err := os.WriteFile(cfg, []byte(bad), 0o600); err != nil {
		t.Fatal(err)
	}
	code, _, errs := runCmd(t, "check", "--config", cfg)
	if code != 1 {
		t.Fatalf("check exit %d, want 1", code)
	}
	for _, want := range []string{`unknown key "audeince" (did you mean "audience"?)`, `max_ttl: "100d" is not a duration`, "exchanged.yaml:"} {
		if !strings.Contains(errs, want) {
			t.Errorf("check does not say %q:\n%s", want, errs)
		}
	}
}

func TestExplain(t *testing.T) {
	cfg := contribConfig(t)
	claims := filepath.Join(filepath.Dir(cfg), "claims.json")
	write := func(s string) {
		if err := os.WriteFile(claims, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(`{"project_path":"platform/app","namespace_path":"platform","ref":"feature","ref_protected":"false","runner_id":12,"sub":"project_path:platform/app:ref_type:branch:ref:feature"}`)
	code, out, errs := runCmd(t, "explain", "--config", cfg, "--claims", claims,
		"--resource", "https://gitlab.example.com/platform/lib.git", "--scope", "read_repository")
	if code != 1 || !strings.Contains(out, "DENY") || !strings.Contains(out, `ref_protected`) {
		t.Fatalf("explain exit %d:\n%s%s", code, out, errs)
	}
	write(`{"project_path":"platform/app","namespace_path":"platform","ref":"main","ref_protected":"true"}`)
	code, out, errs = runCmd(t, "explain", "--config", cfg, "--claims", claims,
		"--resource", "https://gitlab.example.com/platform/lib.git", "--scope", "read_repository")
	if code != 0 || !strings.Contains(out, `ALLOW by rule "app-reads-libs"`) || !strings.Contains(out, "project_deploy_token on platform/lib") {
		t.Fatalf("explain exit %d:\n%s%s", code, out, errs)
	}
	// own-config: the {{project_path}} template.
	code, out, _ = runCmd(t, "explain", "--config", cfg, "--claims", claims,
		"--resource", "https://gitlab.example.com/platform/app-config.git", "--scope", "read_repository")
	if code != 0 || !strings.Contains(out, `"own-config"`) {
		t.Fatalf("explain exit %d:\n%s", code, out)
	}
	// Group deploy token for the tools group.
	code, out, _ = runCmd(t, "explain", "--config", cfg, "--claims", claims,
		"--resource", "https://gitlab.example.com/platform/tools/cli.git", "--scope", "read_repository")
	if code != 0 || !strings.Contains(out, "group_deploy_token on platform/tools") {
		t.Fatalf("explain exit %d:\n%s", code, out)
	}
	// A deploy job without environment: the closest rule is the deploy rule
	// (three checks passed), not a read rule that failed on the target.
	write(`{"project_path":"platform/app","namespace_path":"platform","ref":"main","ref_protected":"true"}`)
	code, out, _ = runCmd(t, "explain", "--config", cfg, "--claims", claims,
		"--resource", "https://gitlab.example.com/platform/deploy.git", "--scope", "read_repository,write_repository")
	if code != 1 || !strings.Contains(out, `closest: rule "app-deploys": match.environment: claim missing`) {
		t.Fatalf("explain of a deploy job without environment: exit %d:\n%s", code, out)
	}
	// The shipped deploy rule grants maintainer (it pushes the protected
	// default branch); with developer, explain says the push would be refused.
	write(`{"project_path":"platform/app","namespace_path":"platform","ref":"main","ref_protected":"true","environment":"production"}`)
	code, out, _ = runCmd(t, "explain", "--config", cfg, "--claims", claims,
		"--resource", "https://gitlab.example.com/platform/deploy.git", "--scope", "read_repository,write_repository")
	if code != 0 || !strings.Contains(out, "access level 40") || strings.Contains(out, "protected branches") {
		t.Fatalf("explain of the shipped deploy rule: exit %d:\n%s", code, out)
	}
	polFile := filepath.Join(filepath.Dir(cfg), "policy.yaml")
	pol, err := os.ReadFile(polFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(polFile, []byte(strings.Replace(string(pol), "access_level: maintainer", "access_level: developer", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, _ = runCmd(t, "explain", "--config", cfg, "--claims", claims,
		"--resource", "https://gitlab.example.com/platform/deploy.git", "--scope", "read_repository,write_repository")
	if code != 0 || !strings.Contains(out, "GitLab refuses its pushes to protected branches") || !strings.Contains(out, `access_level: maintainer in rule "app-deploys"`) {
		t.Fatalf("explain of a developer push rule: exit %d:\n%s", code, out)
	}
	if code, _, _ := runCmd(t, "explain", "--config", cfg); code != 2 {
		t.Fatalf("explain without arguments: exit %d, want 2", code)
	}
}

func TestUsageAndVersion(t *testing.T) {
	code, out, _ := runCmd(t, "--help")
	for _, section := range []string{"NAME", "SYNOPSIS", "DESCRIPTION", "COMMANDS", "OPTIONS", "EXIT STATUS", "EXAMPLES"} {
		if !strings.Contains(out, section) {
			t.Errorf("--help lacks %s", section)
		}
	}
	if code != 0 {
		t.Fatalf("--help exit %d", code)
	}
	if code, out, _ := runCmd(t, "version"); code != 0 || !strings.HasPrefix(out, "exchanged ") {
		t.Fatalf("version: %d %q", code, out)
	}
	if code, _, errs := runCmd(t, "frobnicate"); code != 2 || !strings.Contains(errs, "unknown command") {
		t.Fatalf("unknown command: %d %q", code, errs)
	}
}

// TestCheckProjectPolicy: check --project-policy validates a policy file on
// its own — no service token, no ledger — and, with --config, under that
// configuration's gitlab.url (the gitlab.com tenant rules).
func TestCheckProjectPolicy(t *testing.T) {
	dir := t.TempDir()
	pol := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(pol, []byte(`rules:
  - name: libs
    match: {project_path: "platform/*"}
    allow: {projects: [platform/lib], scopes: [read_repository]}
  - name: trial
    mode: shadow
    match: {project_path: "platform/*", ref_protected: "true"}
    allow: {projects: [platform/lib], scopes: [read_repository]}
`), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, errs := runCmd(t, "check", "--project-policy", pol)
	if code != 0 || !strings.Contains(out, pol+": ok (1 rules: libs)") || !strings.Contains(out, "mode shadow, enforced nowhere: trial") {
		t.Fatalf("check --project-policy: exit %d\n%s%s", code, out, errs)
	}

	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("rules:\n  - name: r\n    mode: dry-run\n    match: {project_path: a/b}\n    allow: {projects: [a/c], scopes: [read_repository]}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if code, _, errs := runCmd(t, "check", "--project-policy", bad); code != 1 || !strings.Contains(errs, `bad.yaml:3: rule "r": mode: want enforce or shadow, not "dry-run"`) {
		t.Fatalf("bad policy: exit %d\n%s", code, errs)
	}

	// Under a gitlab.com configuration a rule must pin a tenant.
	cfg := contribConfig(t)
	c, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfg, []byte(strings.Replace(string(c), "https://gitlab.example.com", "https://gitlab.com", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	openPol := filepath.Join(dir, "open.yaml")
	if err := os.WriteFile(openPol, []byte("rules:\n  - name: any-protected\n    match: {ref_protected: \"true\"}\n    allow: {projects: [platform/lib], scopes: [read_repository]}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if code, out, errs := runCmd(t, "check", "--project-policy", openPol); code != 0 {
		t.Fatalf("without --config: exit %d\n%s%s", code, out, errs)
	}
	if code, _, errs := runCmd(t, "check", "--config", cfg, "--project-policy", openPol); code != 1 || !strings.Contains(errs, "gitlab.com") {
		t.Fatalf("gitlab.com tenant rules: exit %d\n%s", code, errs)
	}
}

// TestSuggestCommand: suggest is dispatched and named in --help; a bad
// --since is a usage error before any file is read.
func TestSuggestCommand(t *testing.T) {
	if _, out, _ := runCmd(t, "--help"); !strings.Contains(out, "exchanged suggest --config FILE --since DURATION [--json]") {
		t.Errorf("--help does not name suggest:\n%s", out)
	}
	if code, out, _ := runCmd(t, "suggest", "--help"); code != 0 || !strings.Contains(out, "SYNOPSIS") {
		t.Errorf("suggest --help: exit %d", code)
	}
	for _, args := range [][]string{{"suggest"}, {"suggest", "--since", "0s"}, {"suggest", "--since", "soon"}} {
		if code, _, errs := runCmd(t, append(args, "--config", "/nonexistent")...); code != 2 || !strings.HasPrefix(errs, "exchanged suggest: ") {
			t.Errorf("%v: exit %d %q", args, code, errs)
		}
	}
	if code, _, errs := runCmd(t, "suggest", "--since", "1h", "--config", "/nonexistent/exchanged.yaml"); code != 1 || errs == "" {
		t.Errorf("missing configuration: exit %d %q", code, errs)
	}
}
