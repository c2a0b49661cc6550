package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"gltoken.dev/gltoken/internal/agent"
	"gltoken.dev/gltoken/internal/gitlabfake"
)

// Go modules from private projects, through the real go command, git and
// the helper, against the stand-in as GitLab at https://gitlab.example.com
// (a module path has no port, so go always asks port 443 of the module's
// host). No process is switched to an insecure mode: the stand-in serves TLS
// under its own CA, go and git get that CA (SSL_CERT_FILE, GIT_SSL_CAINFO)
// and reach gitlab.example.com through the stand-in's CONNECT proxy
// (https_proxy), as DNS would take them there.

const gitlabHost = "gitlab.example.com"

// hostWorld is a world whose stand-in is GitLab at https://gitlab.example.com,
// with the environment every process needs to reach it.
type hostWorld struct {
	*world
	caFile string
	env    []string // https_proxy and the CA, for git, go, exchanged and the agent
}

func newHostWorld(t *testing.T) *hostWorld {
	t.Helper()
	w := newWorldWith(t, gitlabfake.Options{Host: gitlabHost})
	ca := filepath.Join(w.dir, "gitlab-ca.pem")
	writeFile(t, ca, string(w.gl.CACertPEM()), 0o644)
	return &hostWorld{world: w, caFile: ca, env: []string{
		"https_proxy=" + w.gl.ProxyURL(), "HTTPS_PROXY=" + w.gl.ProxyURL(),
		"http_proxy=", "HTTP_PROXY=", "no_proxy=", "NO_PROXY=", "ALL_PROXY=", "all_proxy=",
		"SSL_CERT_FILE=" + ca, "GIT_SSL_CAINFO=" + ca,
	}}
}

// startDaemon starts exchanged for https://gitlab.example.com, trusting the stand-in's CA
// (gitlab.ca_file, as a GitLab with a private CA is configured) and reaching it through the proxy.
func (hw *hostWorld) startDaemon(t *testing.T) *daemon {
	t.Helper()
	return hw.world.startDaemon(t, daemonOpts{gitlab: "  ca_file: " + hw.caFile + "\n", env: hw.env})
}

var (
	goCacheOnce sync.Once
	goCache     string
)

// goEnv is a fresh GOPATH and module cache for one test, and nothing of the
// machine's go configuration. The build cache is shared: it holds compiled
// packages keyed by their content, no module source and no credential.
func goEnv(t *testing.T) []string {
	t.Helper()
	goCacheOnce.Do(func() {
		out, err := exec.Command("go", "env", "GOCACHE").Output()
		if err == nil {
			goCache = strings.TrimSpace(string(out))
		}
	})
	gopath := t.TempDir()
	return []string{
		"GOPATH=" + gopath, "GOMODCACHE=" + filepath.Join(gopath, "pkg", "mod"), "GOCACHE=" + goCache,
		"GOTOOLCHAIN=local", "GOFLAGS=-modcacherw", // -modcacherw: t.TempDir can remove the cache
		"GOPRIVATE=", "GONOPROXY=", "GONOSUMDB=", "GONOSUMCHECK=", "GOINSECURE=", "GOAUTH=", "GOPROXY=", "GOSUMDB=",
	}
}

// publishModule pushes a Go package to project's default branch, as its
// maintainer would, with go.mod naming modulePath, and tags it v1.0.0.
func (hw *hostWorld) publishModule(t *testing.T, project, modulePath string) {
	t.Helper()
	setup := hw.staticGit(t, "gltoken-bot", hw.botToken)
	setup.env = append(setup.env, hw.env...)
	setup.mustRun("", "clone", hw.gl.URL()+"/"+project+".git", "src")
	src := filepath.Join(setup.workDir, "src")
	pkg := strings.TrimSuffix(filepath.Base(modulePath), ".git")
	writeFile(t, filepath.Join(src, "go.mod"), "module "+modulePath+"\n\ngo 1.26\n", 0o644)
	writeFile(t, filepath.Join(src, pkg+".go"), fmt.Sprintf("// Package %s says where it comes from.\npackage %s\n\n// Hello names the project.\nfunc Hello() string { return \"hello from %s\" }\n", pkg, pkg, project), 0o644)
	setup.mustRun(src, "add", ".")
	setup.mustRun(src, "commit", "-q", "-m", "Go package")
	setup.mustRun(src, "tag", "v1.0.0")
	setup.mustRun(src, "push", "-q", "origin", "HEAD", "v1.0.0")
}

// consumer writes a module that requires modulePath v1.0.0 and prints its Hello.
// It has no go.sum (a real project commits one): the tests build it with
// go run -mod=mod, which records the checksum of what go mod download fetched.
func consumer(t *testing.T, modulePath string) string {
	t.Helper()
	dir := t.TempDir()
	pkg := strings.TrimSuffix(filepath.Base(modulePath), ".git")
	writeFile(t, filepath.Join(dir, "go.mod"), "module example.com/consumer\n\ngo 1.26\n\nrequire "+modulePath+" v1.0.0\n", 0o644)
	writeFile(t, filepath.Join(dir, "main.go"), fmt.Sprintf("package main\n\nimport (\n\t\"fmt\"\n\n\t%s %q\n)\n\nfunc main() { fmt.Println(%s.Hello()) }\n", pkg, modulePath, pkg), 0o644)
	return dir
}

// goRecipe returns the shell lines of the README's Go modules block.
func goRecipe(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(b), "## Go modules from private projects\n")
	if !ok {
		t.Fatal("README has no Go modules section")
	}
	_, rest, ok = strings.Cut(rest, "```sh\n")
	if !ok {
		t.Fatal("README's Go modules section has no sh block")
	}
	block, _, _ := strings.Cut(rest, "```")
	var lines []string
	for _, l := range strings.Split(strings.TrimSpace(block), "\n") {
		lines = append(lines, strings.TrimSpace(l))
	}
	if len(lines) < 2 || !strings.Contains(block, "GOPRIVATE="+gitlabHost) {
		t.Fatalf("README's Go modules block:\n%s", block)
	}
	return lines
}

// sh runs script with sh -ec in dir and returns its combined output.
func sh(dir string, env []string, script string) (string, error) {
	cmd := exec.Command("sh", "-ec", script)
	cmd.Dir = dir
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func needGo(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("go"); err != nil {
		t.Fatalf("the go command is not on PATH: %v", err)
	}
}

// TestGoModulesCIJob: a CI job runs the README's CI snippet (configure, a
// clone) and then the README's Go modules lines literally; go fetches the
// private platform/lib through git and the helper, with a deploy token the
// daemon minted for the job's ID token.
func TestGoModulesCIJob(t *testing.T) {
	needGo(t)
	hw := newHostWorld(t)
	hw.publishModule(t, "platform/lib", gitlabHost+"/platform/lib")
	d := hw.startDaemon(t)
	before := len(hw.liveMinted())

	home := t.TempDir()
	checkout := filepath.Join(t.TempDir(), "app")
	if out, err := exec.Command("git", "init", "-q", checkout).CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	app := consumer(t, gitlabHost+"/platform/lib")
	env := append([]string{
		"PATH=" + binDir + string(os.PathListSeparator) + os.Getenv("PATH"),
		"HOME=" + home, "GIT_CONFIG_NOSYSTEM=1", "GIT_TERMINAL_PROMPT=0",
		"CI=true", "GITLAB_CI=true", "CI_SERVER_URL=https://" + gitlabHost, "CI_PROJECT_PATH=platform/app",
		"GLTOKEN_ID_TOKEN=" + hw.job("main", true), "GLTOKEN_DAEMON=" + d.daemonURL(),
	}, hw.env...)
	env = append(env, goEnv(t)...)
	script := strings.Join(ciSnippet(t), "\n") + "\ncd " + app + "\n" + strings.Join(goRecipe(t), "\n") + "\ngo run -mod=mod .\n"
	out, err := sh(checkout, env, script)
	if err != nil {
		t.Fatalf("the README's CI snippet and Go lines failed: %v\n%s\ndaemon log:\n%s", err, out, d.logs.String())
	}
	if !strings.Contains(out, "hello from platform/lib\n") {
		t.Fatalf("go run did not use the fetched module:\n%s", out)
	}
	assertNoSecrets(t, "job output", out)
	assertNoSecrets(t, "daemon log", d.logs.String())

	// go asked GitLab where the module lives (anonymously: GitLab answered the
	// two-segment guess, which is the project), then git fetched it.
	var goGet, fetch bool
	for _, r := range hw.gl.Requests() {
		goGet = goGet || (r.Path == "/platform/lib" && r.Status == 200)
		fetch = fetch || (r.Path == "/platform/lib.git/git-upload-pack" && r.Status == 200)
	}
	if !goGet || !fetch {
		t.Fatalf("go-get answered: %v, git fetch: %v", goGet, fetch)
	}
	var minted []gitlabfake.TokenState
	for _, tok := range hw.liveMinted() {
		if tok.OwnerPath == "platform/lib" {
			minted = append(minted, tok)
		}
	}
	if len(hw.liveMinted()) < before || len(minted) != 1 || minted[0].Kind != gitlabfake.KindDeployProject || strings.Join(minted[0].Scopes, ",") != "read_repository" {
		t.Fatalf("credentials on platform/lib: %+v, want one read_repository deploy token", minted)
	}
	// The module is in the test's own cache, nowhere else.
	if _, err := os.Stat(filepath.Join(envValue(env, "GOMODCACHE"), gitlabHost, "platform", "lib@v1.0.0", "lib.go")); err != nil {
		t.Fatalf("module not in the fresh GOMODCACHE: %v", err)
	}
}

// TestGoModulesSubgroupCIJob: for a private project in a subgroup, GitLab
// answers go's anonymous question with the first two segments, and go looks
// in the wrong repository; GOAUTH=git does not change that (go asks git only
// after a 4xx). The module named with the .git qualifier, as the README says,
// is fetched with git directly, through the helper.
func TestGoModulesSubgroupCIJob(t *testing.T) {
	needGo(t)
	hw := newHostWorld(t)
	hw.publishModule(t, "platform/tools/cli", gitlabHost+"/platform/tools/cli.git")
	d := hw.startDaemon(t)
	home := t.TempDir()
	env := append([]string{
		"PATH=" + binDir + string(os.PathListSeparator) + os.Getenv("PATH"),
		"HOME=" + home, "GIT_CONFIG_NOSYSTEM=1", "GIT_TERMINAL_PROMPT=0",
		"CI=true", "GITLAB_CI=true", "CI_SERVER_URL=https://" + gitlabHost, "CI_PROJECT_PATH=platform/app",
		"GLTOKEN_ID_TOKEN=" + hw.job("main", true), "GLTOKEN_DAEMON=" + d.daemonURL(),
	}, hw.env...)
	env = append(env, goEnv(t)...)
	configure := ciSnippet(t)[0]
	recipe := strings.Join(goRecipe(t), "\n")

	// Without the qualifier, even with GOAUTH=git.
	plain := consumer(t, gitlabHost+"/platform/tools/cli")
	out, err := sh(plain, env, configure+"\nexport GOAUTH=\"git $HOME\"\n"+recipe)
	if err == nil {
		t.Fatalf("the subgroup module without .git was fetched:\n%s", out)
	}
	if !strings.Contains(out, gitlabHost+"/platform/tools.git") {
		t.Fatalf("go did not look in the guessed repository platform/tools.git:\n%s", out)
	}
	assertNoSecrets(t, "go output", out)

	withGit := consumer(t, gitlabHost+"/platform/tools/cli.git")
	out, err = sh(withGit, env, configure+"\n"+recipe+"\ngo run -mod=mod .\n")
	if err != nil || !strings.Contains(out, "hello from platform/tools/cli\n") {
		t.Fatalf("the .git-qualified module: %v\n%s\ndaemon log:\n%s", err, out, d.logs.String())
	}
	var group bool
	for _, tok := range hw.liveMinted() {
		group = group || (tok.Kind == gitlabfake.KindDeployGroup && tok.OwnerPath == "platform/tools")
	}
	if !group {
		t.Fatalf("no group deploy token on platform/tools (the policy's tools rule): %+v", hw.liveMinted())
	}
}

// TestGoModulesDeveloper: a developer configures the helper and logs in (a
// device login approved at the stand-in), then runs the README's Go modules
// lines: git fetches the private module with the agent's OAuth token; the
// daemon is not involved and nothing is minted.
func TestGoModulesDeveloper(t *testing.T) {
	needGo(t)
	hw := newHostWorld(t)
	hw.publishModule(t, "platform/lib", gitlabHost+"/platform/lib")
	oauthApp := hw.gl.AddOAuthApplication("gltoken", []string{"http://127.0.0.1/"}, []string{"read_repository", "write_repository"}, false)
	hw.gl.AddMember(hw.dev, "platform/lib", gitlabfake.Reporter)

	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	const configure = "git config --global credential.https://gitlab.example.com.helper gltoken"
	if !strings.Contains(string(readme), "\n"+configure+"\n") {
		t.Fatalf("README's developer section no longer shows %q", configure)
	}
	sockDir, err := os.MkdirTemp("", "gla") // short: socket paths are limited to 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	if err := os.Chmod(sockDir, 0o700); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(sockDir, "agent.sock")
	t.Cleanup(func() { stopAgent(sock) })
	home := t.TempDir()
	env := append([]string{
		"PATH=" + binDir + string(os.PathListSeparator) + os.Getenv("PATH"),
		"HOME=" + home, "GIT_CONFIG_NOSYSTEM=1", "GIT_TERMINAL_PROMPT=0", "GIT_ASKPASS=", "SSH_ASKPASS=",
		"GLTOKEN_AGENT_SOCKET=" + sock, "GLTOKEN_ID_TOKEN=", "GITLAB_CI=", "CI=",
	}, hw.env...)
	env = append(env, goEnv(t)...)

	done := approveDeviceLogin(t, hw.gl, hw.dev)
	out, err := sh(home, env, configure+"\ngit-credential-gltoken login --host https://"+gitlabHost+" --client-id "+oauthApp.UID)
	done()
	if err != nil {
		t.Fatalf("login: %v\n%s", err, out)
	}
	app := consumer(t, gitlabHost+"/platform/lib")
	out, err = sh(app, env, strings.Join(goRecipe(t), "\n")+"\ngo run -mod=mod .\n")
	if err != nil || !strings.Contains(out, "hello from platform/lib\n") {
		t.Fatalf("the README's Go lines after login: %v\n%s", err, out)
	}
	assertNoSecrets(t, "go output", out)
	if live := hw.liveMinted(); len(live) != 0 {
		t.Fatalf("the developer path minted: %+v", live)
	}
	var fetched bool
	for _, r := range hw.gl.Requests() {
		fetched = fetched || (r.Path == "/platform/lib.git/git-upload-pack" && r.Status == 200)
	}
	if !fetched {
		t.Fatal("git did not fetch platform/lib")
	}
}

// approveDeviceLogin plays the person at the device page: the first code that
// appears is approved as u.
func approveDeviceLogin(t *testing.T, gl *gitlabfake.Server, u *gitlabfake.User) (done func()) {
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			for _, code := range gl.PendingDeviceCodes() {
				if err := gl.ApproveDevice(code, u); err != nil {
					t.Error(err)
				}
				return
			}
		}
	}()
	return func() { close(stop); wg.Wait() }
}

// stopAgent ends the agent a login started, by its pid.
func stopAgent(sock string) {
	st, err := agent.NewClient(sock).Status(context.Background())
	if err != nil {
		return
	}
	if p, err := os.FindProcess(st.PID); err == nil && st.PID != os.Getpid() {
		_ = p.Signal(syscall.SIGTERM)
	}
}

func envValue(env []string, key string) string {
	v := ""
	for _, kv := range env {
		if k, val, ok := strings.Cut(kv, "="); ok && k == key {
			v = val
		}
	}
	return v
}
