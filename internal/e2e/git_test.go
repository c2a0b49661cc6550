package e2e

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"gltoken.dev/gltoken/internal/gitlabfake"
)

// secretPattern matches anything that looks like a GitLab secret or a JWT.
var secretPattern = regexp.MustCompile(`gl(dt|pat)-[A-Za-z0-9_-]{8,}|eyJ[A-Za-z0-9_-]{10,}\.`)

func assertNoSecrets(t *testing.T, what, text string) {
	t.Helper()
	if m := secretPattern.FindString(text); m != "" {
		t.Fatalf("%s leaks a secret (%.12s…):\n%s", what, m, text)
	}
}

func TestCloneAllowedAndDenied(t *testing.T) {
	w := newWorld(t)
	d := w.startDaemon(t, daemonOpts{})
	g := w.git(t, d, w.job("main", true))

	g.mustRun("", "clone", w.gl.URL()+"/platform/lib.git")
	if _, err := os.Stat(filepath.Join(g.workDir, "lib", "README.md")); err != nil {
		t.Fatalf("clone has no README: %v", err)
	}
	live := w.liveMinted()
	if len(live) != 1 {
		t.Fatalf("%d live minted tokens, want 1: %+v", len(live), live)
	}
	tok := live[0]
	if tok.Kind != gitlabfake.KindDeployProject || tok.OwnerPath != "platform/lib" || strings.Join(tok.Scopes, ",") != "read_repository" {
		t.Fatalf("minted %+v, want a read_repository deploy token on platform/lib", tok)
	}
	if tok.ExpiresAt == nil || time.Until(*tok.ExpiresAt) > time.Hour || time.Until(*tok.ExpiresAt) < 58*time.Minute {
		t.Fatalf("deploy token expires at %v, want about an hour from now", tok.ExpiresAt)
	}

	// A fetch reuses the daemon's cached credential: still one token.
	g.mustRun(filepath.Join(g.workDir, "lib"), "fetch")
	if n := len(w.liveMinted()); n != 1 {
		t.Fatalf("fetch minted again: %d live tokens", n)
	}

	// Denied: the policy does not grant platform/secret. git fails, the
	// helper says why on stderr, and nothing secret shows.
	out, err := g.run("", "clone", w.gl.URL()+"/platform/secret.git")
	if err == nil {
		t.Fatalf("clone of platform/secret succeeded:\n%s", out)
	}
	if !strings.Contains(out, "denied by policy") || !strings.Contains(out, "platform/secret") {
		t.Fatalf("denied clone does not explain itself:\n%s", out)
	}
	assertNoSecrets(t, "denied clone output", out)
	if n := len(w.liveMinted()); n != 1 {
		t.Fatalf("a denied clone minted: %d live tokens", n)
	}

	// An unprotected branch gets nothing.
	g2 := w.git(t, d, w.job("feature", false))
	out, err = g2.run("", "clone", w.gl.URL()+"/platform/lib.git")
	if err == nil || !strings.Contains(out, "ref_protected") {
		t.Fatalf("unprotected clone: err=%v\n%s", err, out)
	}
	assertNoSecrets(t, "daemon log", d.logs.String())
}

func TestPushNeedsWriteScope(t *testing.T) {
	w := newWorld(t)
	d := w.startDaemon(t, daemonOpts{})

	// read_repository only (the default): clone works, push is refused by GitLab.
	g := w.git(t, d, w.job("main", true))
	g.mustRun("", "clone", w.gl.URL()+"/platform/lib.git")
	lib := filepath.Join(g.workDir, "lib")
	writeFile(t, filepath.Join(lib, "change.txt"), "x\n", 0o644)
	g.mustRun(lib, "add", ".")
	g.mustRun(lib, "commit", "-m", "change")
	if out, err := g.run(lib, "push"); err == nil {
		t.Fatalf("push with a read-only credential succeeded:\n%s", out)
	}

	// The policy grants write_repository on platform/deploy to main.
	gw := w.git(t, d, w.job("main", true), "GLTOKEN_SCOPE=read_repository write_repository")
	gw.mustRun("", "clone", w.gl.URL()+"/platform/deploy.git")
	dep := filepath.Join(gw.workDir, "deploy")
	writeFile(t, filepath.Join(dep, "version"), "2\n", 0o644)
	gw.mustRun(dep, "add", ".")
	gw.mustRun(dep, "commit", "-m", "bump")
	// A developer's token may not push to the protected default branch, as in
	// GitLab; it may push a branch of its own.
	// The helper's note names the role and what to change.
	if out, err := gw.run(dep, "push", "origin", "main"); err == nil || !strings.Contains(out, "protected branch") ||
		!strings.Contains(out, "gltoken: note: this credential's role is developer (access level 30)") ||
		!strings.Contains(out, "access_level: maintainer") {
		t.Fatalf("push to protected main: err=%v\n%s", err, out)
	}
	gw.mustRun(dep, "push", "origin", "HEAD:refs/heads/deploy/bump")
	var pat *gitlabfake.TokenState
	for _, tok := range w.liveMinted() {
		if tok.OwnerPath == "platform/deploy" {
			pat = &tok
		}
	}
	if pat == nil || pat.Kind != gitlabfake.KindProjectAccess || pat.AccessLevel != 30 {
		t.Fatalf("push credential = %+v, want a developer project access token on platform/deploy", pat)
	}

	// The same write scope on platform/lib is not granted.
	gw2 := w.git(t, d, w.job("main", true), "GLTOKEN_SCOPE=read_repository write_repository")
	out, err := gw2.run("", "clone", w.gl.URL()+"/platform/lib.git")
	if err == nil || !strings.Contains(out, "write_repository") {
		t.Fatalf("write scope on lib: err=%v\n%s", err, out)
	}
}

func TestSubmoduleAndGroupDeployToken(t *testing.T) {
	w := newWorld(t)
	// A maintainer adds platform/tools/cli as a submodule of platform/app.
	setup := w.staticGit(t, "gltoken-bot", w.botToken)
	setup.mustRun("", "clone", w.gl.URL()+"/platform/app.git")
	app := filepath.Join(setup.workDir, "app")
	setup.mustRun(app, "submodule", "add", w.gl.URL()+"/platform/tools/cli.git", "cli")
	setup.mustRun(app, "commit", "-m", "add cli as a submodule")
	setup.mustRun(app, "push")

	d := w.startDaemon(t, daemonOpts{})
	g := w.git(t, d, w.job("main", true))
	g.mustRun("", "clone", "--recurse-submodules", w.gl.URL()+"/platform/app.git")
	if _, err := os.Stat(filepath.Join(g.workDir, "app", "cli", "README.md")); err != nil {
		t.Fatalf("submodule not checked out: %v", err)
	}
	g.mustRun("", "clone", w.gl.URL()+"/platform/tools/lint.git")
	var group []gitlabfake.TokenState
	for _, tok := range w.liveMinted() {
		if tok.Kind == gitlabfake.KindDeployGroup {
			group = append(group, tok)
		}
	}
	if len(group) != 1 || group[0].OwnerPath != "platform/tools" {
		t.Fatalf("want one group deploy token on platform/tools serving both tool repos, got %+v", group)
	}
}

func TestRevokedCredentialIsErasedAndReplaced(t *testing.T) {
	w := newWorld(t)
	d := w.startDaemon(t, daemonOpts{})
	g := w.git(t, d, w.job("main", true))
	g.mustRun("", "clone", w.gl.URL()+"/platform/lib.git")
	first := w.liveMinted()
	if len(first) != 1 {
		t.Fatalf("live = %+v", first)
	}
	// GitLab stops accepting the credential (an admin revokes it): git gets a
	// 401, sends erase with the failed password, and fails this once.
	w.gl.RevokeToken(first[0].Kind, first[0].ID)
	lib := filepath.Join(g.workDir, "lib")
	if out, err := g.run(lib, "fetch"); err == nil {
		t.Fatalf("fetch with a revoked credential succeeded:\n%s", out)
	}
	// The helper's erase made the daemon drop that credential, so the next
	// get mints a fresh one.
	g.mustRun(lib, "fetch")
	live := w.liveMinted()
	if len(live) != 1 || live[0].ID == first[0].ID {
		t.Fatalf("after erase: live = %+v, want one new token", live)
	}
}

func TestReaperRevokesAtTTL(t *testing.T) {
	w := newWorld(t)
	d := w.startDaemon(t, daemonOpts{reaperInterval: "1s"})
	resp, body := d.exchange(w.job("short-lived", false), w.gl.URL()+"/platform/lib.git", "read_repository")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("exchange: %d %s", resp.StatusCode, body)
	}
	var tr struct {
		ExpiresIn int64 `json:"expires_in"`
	}
	_ = json.Unmarshal([]byte(body), &tr)
	if tr.ExpiresIn < 10 || tr.ExpiresIn > 12 {
		t.Fatalf("expires_in = %d, want the rule's 12s", tr.ExpiresIn)
	}
	if n := len(w.liveMinted()); n != 1 {
		t.Fatalf("live = %d", n)
	}
	// TTL plus one reaper interval, plus slack for a loaded machine.
	deadline := time.Now().Add(12*time.Second + time.Second + 10*time.Second)
	for len(w.liveMinted()) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("token still live long after its TTL:\n%s", d.logs.String())
		}
		time.Sleep(200 * time.Millisecond)
	}
	// The audit event follows GitLab's answer to the delete.
	for !strings.Contains(d.logs.String(), `"msg":"revocation"`) {
		if time.Now().After(deadline.Add(5 * time.Second)) {
			t.Fatal("no revocation audit event")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestShippedDeployExamplePushes plays contrib/gitlab-ci.yml's deploy job
// under contrib/policy.yaml: a pipeline of platform/app on main, environment
// production, clones platform/deploy and pushes its default branch, which the
// stand-in protects as GitLab does (maintainers only).
func TestShippedDeployExamplePushes(t *testing.T) {
	pol, err := os.ReadFile("../../contrib/policy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	ci, err := os.ReadFile("../../contrib/gitlab-ci.yml")
	if err != nil {
		t.Fatal(err)
	}
	scope := regexp.MustCompile(`(?m)^\s+GLTOKEN_SCOPE: "([^"]+)"`).FindSubmatch(ci)
	if scope == nil {
		t.Fatal("contrib/gitlab-ci.yml: no GLTOKEN_SCOPE in the deploy job")
	}
	if !strings.Contains(string(ci), `git commit -am "deploy ${CI_COMMIT_SHORT_SHA}" && git push origin HEAD`) {
		t.Fatal("contrib/gitlab-ci.yml's deploy script changed: update this test")
	}
	w := newWorld(t)
	d := w.startDaemon(t, daemonOpts{policy: string(pol)})
	job := w.job("main", true, func(j *gitlabfake.Job) { j.Environment = "production" })
	g := w.git(t, d, job, "GLTOKEN_SCOPE="+string(scope[1]))
	g.mustRun("", "clone", w.gl.URL()+"/platform/deploy.git")
	dep := filepath.Join(g.workDir, "deploy")
	writeFile(t, filepath.Join(dep, "version"), "2\n", 0o644)
	g.mustRun(dep, "add", ".")
	g.mustRun(dep, "commit", "-m", "deploy abc123")
	out := g.mustRun(dep, "push", "origin", "HEAD")
	if strings.Contains(out, "gltoken: note") {
		t.Fatalf("a maintainer's push printed the protected-branch note:\n%s", out)
	}
}
