package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"gltoken.dev/gltoken/internal/gitlabfake"
)

// TestCheckOnline: check --online asks the stand-in about the service token
// (GET /personal_access_tokens/self) and fails, saying why, on a revoked
// token, an expired one, an unknown one and one without the api scope; a good
// one passes with its scopes and the days left before it expires.
func TestCheckOnline(t *testing.T) {
	gl := gitlabfake.Start(t, gitlabfake.Options{})
	bot := gl.AddUser("gltoken-bot")
	in10 := time.Now().Add(10*24*time.Hour + time.Hour)
	past := time.Now().Add(-48 * time.Hour)
	good := gl.CreatePersonalAccessToken(bot, "good", []string{"api"}, &in10)
	readAPI := gl.CreatePersonalAccessToken(bot, "read-only", []string{"read_api"}, &in10)
	expired := gl.CreatePersonalAccessToken(bot, "expired", []string{"api"}, &past)
	revoked := gl.CreatePersonalAccessToken(bot, "revoked", []string{"api"}, &in10)
	st, _ := gl.TokenByName("revoked")
	gl.RevokeToken(st.Kind, st.ID)

	cfg := contribConfig(t)
	b, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfg, []byte(strings.ReplaceAll(string(b), "https://gitlab.example.com", gl.URL())), 0o600); err != nil {
		t.Fatal(err)
	}
	tokenFile := filepath.Join(filepath.Dir(cfg), "gitlab-token")
	for _, tc := range []struct {
		name, token string
		wantCode    int
		want        string
	}{
		{name: "good", token: good, wantCode: 0, want: `GitLab accepts token "good"`},
		{name: "no api scope", token: readAPI, wantCode: 1, want: "lacks the api scope"},
		{name: "expired", token: expired, wantCode: 1, want: "rejects the service token (401): it is invalid, expired or revoked"},
		{name: "revoked", token: revoked, wantCode: 1, want: "rejects the service token (401)"},
		{name: "unknown", token: "glpat-notatoken", wantCode: 1, want: "rejects the service token (401)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := os.WriteFile(tokenFile, []byte(tc.token+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			code, out, errs := runCmd(t, "check", "--config", cfg, "--online")
			if code != tc.wantCode || !strings.Contains(out+errs, tc.want) {
				t.Fatalf("check --online: exit %d, want %d with %q:\n%s%s", code, tc.wantCode, tc.want, out, errs)
			}
			y, m, d := in10.UTC().Date()
			days := fmt.Sprintf("%d day(s) left", int(time.Until(time.Date(y, m, d, 0, 0, 0, 0, time.UTC)).Hours()/24))
			if tc.wantCode == 0 && !strings.Contains(out, days) {
				t.Fatalf("no days left in:\n%s", out)
			}
			if strings.Contains(out+errs, tc.token) {
				t.Fatalf("the output shows the secret:\n%s%s", out, errs)
			}
		})
	}
	// Offline, the check does not ask GitLab.
	if code, out, errs := runCmd(t, "check", "--config", cfg); code != 0 || strings.Contains(out, "GitLab accepts") {
		t.Fatalf("check without --online: exit %d:\n%s%s", code, out, errs)
	}
}

// TestExplainIDToken: explain takes the raw JWT a job holds (a file or
// stdin), decodes it without verifying and says so; an expired one is named
// as such; something that is not a JWT is refused without echoing it.
func TestExplainIDToken(t *testing.T) {
	gl := gitlabfake.Start(t, gitlabfake.Options{})
	app := gl.AddProject("platform/app")
	dev := gl.AddUser("alice")
	gl.AddMember(dev, "platform/app", 30)
	tok := gl.IssueIDToken(gitlabfake.Job{Project: app, User: dev, Ref: "main", RefType: "branch", RefProtected: true,
		Audience: []string{"https://gltoken.example.com"}, Timeout: time.Hour})
	cfg := contribConfig(t)
	file := filepath.Join(filepath.Dir(cfg), "id-token")
	if err := os.WriteFile(file, []byte(tok+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	args := []string{"explain", "--config", cfg, "--resource", "https://gitlab.example.com/platform/lib.git", "--scope", "read_repository"}
	code, out, errs := runCmd(t, append(args, "--id-token", file)...)
	if code != 0 || !strings.Contains(out, "decoded from the ID token WITHOUT verification") || !strings.Contains(out, `ALLOW by rule "app-reads-libs"`) {
		t.Fatalf("explain --id-token: exit %d:\n%s%s", code, out, errs)
	}
	if strings.Contains(out, "expired") {
		t.Fatalf("a live token is called expired:\n%s", out)
	}

	// From stdin, hand-made and expired (explain checks no signature).
	enc := func(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }
	old := enc(`{"alg":"RS256","typ":"JWT"}`) + "." +
		enc(`{"project_path":"platform/app","namespace_path":"platform","ref":"main","ref_protected":"true","exp":1000000000}`) + ".c2ln"
	var stdout, stderr bytes.Buffer
	code = run(context.Background(), append(args, "--id-token", "-"), strings.NewReader(old), &stdout, &stderr)
	if code != 0 || !strings.Contains(stdout.String(), "this ID token expired at 2001-09-09T01:46:40Z") {
		t.Fatalf("explain --id-token - (expired): exit %d:\n%s%s", code, stdout.String(), stderr.String())
	}

	// Not a JWT; and --claims with --id-token is a usage error.
	stdout.Reset()
	stderr.Reset()
	code = run(context.Background(), append(args, "--id-token", "-"), strings.NewReader("glpat-secretsecret"), &stdout, &stderr)
	if code != 1 || !strings.Contains(stderr.String(), "not a JWT") || strings.Contains(stdout.String()+stderr.String(), "secretsecret") {
		t.Fatalf("explain of a non-JWT: exit %d:\n%s%s", code, stdout.String(), stderr.String())
	}
	if code, _, _ := runCmd(t, append(args, "--id-token", file, "--claims", file)...); code != 2 {
		t.Fatalf("--claims with --id-token: exit %d, want 2", code)
	}
}

// TestCheckOnlineTokenFiles: with gitlab.token_files, check --online asks
// GitLab about each token and prints a line for each; one GitLab rejects
// fails the check, naming its file; two tokens of one GitLab user are
// named in a warning (they share GitLab's rate limit).
func TestCheckOnlineTokenFiles(t *testing.T) {
	gl := gitlabfake.Start(t, gitlabfake.Options{})
	a, b := gl.AddUser("svc-a"), gl.AddUser("svc-b")
	in30 := time.Now().Add(30 * 24 * time.Hour)
	tokA := gl.CreatePersonalAccessToken(a, "sa-a", []string{"api"}, &in30)
	tokA2 := gl.CreatePersonalAccessToken(a, "sa-a2", []string{"api"}, &in30)
	tokB := gl.CreatePersonalAccessToken(b, "sa-b", []string{"api"}, &in30)
	dir := t.TempDir()
	pol, err := os.ReadFile("../../contrib/policy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "exchanged.yaml")
	for name, data := range map[string]string{
		"policy.yaml": string(pol),
		"exchanged.yaml": fmt.Sprintf("listen: [unix://%s/x.sock]\ngitlab:\n  url: %s\n  token_files: [sa-1, sa-2]\naudience: https://gltoken.example.com\npolicy_file: policy.yaml\nstore: {driver: sqlite, dsn: state.db}\n",
			dir, gl.URL()),
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write := func(name, tok string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(tok+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("sa-1", tokA)
	write("sa-2", tokB)
	code, out, errs := runCmd(t, "check", "--config", cfg, "--online")
	if code != 0 || !strings.Contains(out, filepath.Join(dir, "sa-1")+`: ok (GitLab accepts token "sa-a"`) ||
		!strings.Contains(out, filepath.Join(dir, "sa-2")+`: ok (GitLab accepts token "sa-b"`) || errs != "" {
		t.Fatalf("two good tokens: exit %d\n%s%s", code, out, errs)
	}
	write("sa-2", tokA2)
	code, out, errs = runCmd(t, "check", "--config", cfg, "--online")
	if code != 0 || !strings.Contains(errs, filepath.Join(dir, "sa-2")+": warning: this token and "+filepath.Join(dir, "sa-1")+"'s belong to one GitLab user") {
		t.Fatalf("two tokens of one user: exit %d\n%s%s", code, out, errs)
	}
	st, _ := gl.TokenByName("sa-b")
	gl.RevokeToken(st.Kind, st.ID)
	write("sa-2", tokB)
	code, out, errs = runCmd(t, "check", "--config", cfg, "--online")
	if code != 1 || !strings.Contains(errs, filepath.Join(dir, "sa-2")+": GitLab ("+gl.URL()+") rejects the service token (401)") ||
		strings.Contains(errs, filepath.Join(dir, "sa-1")+":") {
		t.Fatalf("the second token revoked: exit %d\n%s%s", code, out, errs)
	}
	for _, tok := range []string{tokA, tokA2, tokB} {
		if strings.Contains(out+errs, tok) {
			t.Fatalf("the output shows a secret:\n%s%s", out, errs)
		}
	}
}
