package credhelper

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
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
	"gltoken.dev/gltoken/internal/gitlaboauth"
)

// devWorld is a stand-in with an OAuth application, a developer and her projects, and a
// private directory for the agent's socket.
type devWorld struct {
	gl     *gitlabfake.Server
	app    *gitlabfake.OAuthApplication
	alice  *gitlabfake.User
	sock   string
	home   string
	bin    string // holds git-credential-gltoken (this test binary)
	env    map[string]string
	gitEnv []string
}

func newDevWorld(t *testing.T, now func() time.Time) *devWorld {
	t.Helper()
	if _, err := exec.LookPath("git"); err != nil {
		t.Fatalf("git is not installed: %v", err)
	}
	gl := gitlabfake.Start(t, gitlabfake.Options{Now: now})
	w := &devWorld{gl: gl}
	w.app = gl.AddOAuthApplication("gltoken", []string{"http://127.0.0.1/"}, []string{"read_repository", "write_repository", "read_registry", "write_registry"}, false)
	w.alice = gl.AddUser("alice")
	gl.AddProject("platform/app")
	gl.AddProject("platform/lib")
	gl.AddProject("platform/secret")
	gl.AddMember(w.alice, "platform/app", gitlabfake.Developer)
	gl.AddMember(w.alice, "platform/lib", gitlabfake.Reporter)

	dir, err := os.MkdirTemp("", "gla") // short: socket paths are limited to 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	w.sock = filepath.Join(dir, "agent.sock")
	w.home = t.TempDir()
	w.bin = t.TempDir()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(self, filepath.Join(w.bin, "git-credential-gltoken")); err != nil {
		t.Fatal(err)
	}
	w.env = map[string]string{"GLTOKEN_AGENT_SOCKET": w.sock, "HOME": w.home, "GLTOKEN_CLIENT_ID": w.app.UID}
	w.gitEnv = append(os.Environ(),
		"PATH="+w.bin+string(os.PathListSeparator)+os.Getenv("PATH"),
		"HOME="+w.home, "GIT_CONFIG_GLOBAL="+filepath.Join(w.home, ".gitconfig"), "GIT_CONFIG_NOSYSTEM=1",
		"GIT_TERMINAL_PROMPT=0", "GIT_ASKPASS=", "SSH_ASKPASS=", "GLTOKEN_ID_TOKEN=", "GITLAB_CI=",
		"GLTOKEN_AGENT_SOCKET="+w.sock,
		"GIT_AUTHOR_NAME=Alice", "GIT_AUTHOR_EMAIL=alice@example.com", "GIT_COMMITTER_NAME=Alice", "GIT_COMMITTER_EMAIL=alice@example.com")
	return w
}

// git runs the real git with the helper configured for the stand-in, as a person's
// ~/.gitconfig would have it.
func (w *devWorld) git(dir string, args ...string) (string, error) {
	cmd := exec.Command("git", append([]string{"-c", "credential." + w.gl.URL() + ".helper=gltoken"}, args...)...)
	cmd.Dir = dir
	cmd.Env = w.gitEnv
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// approveWhenAsked plays the person at the device page: the first code that appears is
// approved as u (or denied).
func approveWhenAsked(t *testing.T, gl *gitlabfake.Server, u *gitlabfake.User, deny bool) (done func()) {
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
				var err error
				if deny {
					err = gl.DenyDevice(code)
				} else {
					err = gl.ApproveDevice(code, u)
				}
				if err != nil {
					t.Error(err)
				}
				return
			}
		}
	}()
	return func() { close(stop); wg.Wait() }
}

// stopAgent ends the agent this test started, by its pid.
func stopAgent(t *testing.T, sock string) {
	st, err := agent.NewClient(sock).Status(context.Background())
	if err != nil {
		return
	}
	if p, err := os.FindProcess(st.PID); err == nil && st.PID != os.Getpid() {
		_ = p.Signal(syscall.SIGTERM)
	}
}

func TestDeveloperDeviceLoginGitAndLogout(t *testing.T) {
	w := newDevWorld(t, nil)
	t.Cleanup(func() { stopAgent(t, w.sock) })

	done := approveWhenAsked(t, w.gl, w.alice, false)
	r := runWith(t, []string{"git-credential-gltoken", "login", "--host", w.gl.URL(), "--scope", "write_repository"}, w.env, "")
	done()
	if r.code != 0 || r.stdout != "" {
		t.Fatalf("login: %+v", r)
	}
	lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "gltoken: to log in to "+w.gl.URL()+", open "+w.gl.URL()+"/oauth/device and enter the code ") ||
		!strings.HasPrefix(lines[2], "gltoken: logged in to "+w.gl.URL()+" with scopes read_repository,write_repository; the grant is kept in the agent's memory only") {
		t.Fatalf("login said:\n%s", r.stderr)
	}

	// The real git clones, fetches and pushes a branch with the OAuth token.
	work := t.TempDir()
	if out, err := w.git(work, "clone", w.gl.URL()+"/platform/app.git"); err != nil {
		t.Fatalf("clone: %v\n%s", err, out)
	}
	app := filepath.Join(work, "app")
	if out, err := w.git(app, "fetch"); err != nil {
		t.Fatalf("fetch: %v\n%s", err, out)
	}
	if err := os.WriteFile(filepath.Join(app, "x.txt"), []byte("x\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"add", "x.txt"}, {"commit", "-qm", "x"}} {
		if out, err := w.git(app, args...); err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
	}
	if out, err := w.git(app, "push", "origin", "HEAD:refs/heads/feature"); err != nil {
		t.Fatalf("push: %v\n%s", err, out)
	}
	// Membership still rules: no access to a project alice is not a member of.
	if out, err := w.git(work, "clone", w.gl.URL()+"/platform/secret.git"); err == nil {
		t.Fatalf("cloned platform/secret:\n%s", out)
	}

	// status names the host, scopes, expiry and where the grant is kept, never a secret.
	r = runWith(t, []string{"git-credential-gltoken", "status"}, w.env, "")
	if r.code != 0 || !strings.Contains(r.stdout, w.gl.URL()+"\n  scopes:  read_repository, write_repository\n  access token expires: ") ||
		!strings.Contains(r.stdout, "kept:    in the agent's memory only") || !strings.Contains(r.stdout, "agent pid ") {
		t.Fatalf("status: %+v", r)
	}
	if w.gl.LiveOAuthTokens() != 1 {
		t.Fatalf("live OAuth tokens = %d", w.gl.LiveOAuthTokens())
	}

	// logout revokes at GitLab, and the next git command fails with the one-line advice.
	r = runWith(t, []string{"git-credential-gltoken", "logout"}, w.env, "")
	if r.code != 0 || r.stderr != "gltoken: logged out of "+w.gl.URL()+": the grant was revoked at GitLab and forgotten\n" {
		t.Fatalf("logout: %+v", r)
	}
	if n := w.gl.LiveOAuthTokens(); n != 0 {
		t.Fatalf("live OAuth tokens after logout = %d", n)
	}
	out, err := w.git(app, "fetch")
	if err == nil {
		t.Fatalf("fetch after logout succeeded:\n%s", out)
	}
	advice := "gltoken: not logged in to " + w.gl.URL() + " and no ID token ($GLTOKEN_ID_TOKEN is not set): run git-credential-gltoken login --host " + w.gl.URL() + "\n"
	if !strings.Contains(out, advice) {
		t.Fatalf("fetch after logout does not advise a login:\n%s", out)
	}
	// The agent started on demand left when its last grant went.
	waitFor(t, func() bool {
		_, err := net.Dial("unix", w.sock)
		return err != nil
	})
}

// TestDeveloperDocker: docker-credential-gltoken hands the login's access token to docker, and
// GitLab's registry token endpoint accepts it for the projects the person may read.
func TestDeveloperDocker(t *testing.T) {
	w := newDevWorld(t, nil)
	t.Cleanup(func() { stopAgent(t, w.sock) })
	done := approveWhenAsked(t, w.gl, w.alice, false)
	r := runWith(t, []string{"git-credential-gltoken", "login", "--host", w.gl.URL(), "--scope", "read_registry"}, w.env, "")
	done()
	if r.code != 0 {
		t.Fatalf("login: %+v", r)
	}
	r = runWith(t, []string{"docker-credential-gltoken", "get"}, w.env, "registry.example.com\n")
	var cred struct{ ServerURL, Username, Secret string }
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &cred) != nil || cred.Username != "oauth2" || cred.Secret == "" {
		t.Fatalf("docker get: %+v", r)
	}
	access := func(project string) string {
		req, _ := http.NewRequest("GET", w.gl.URL()+"/jwt/auth?service=container_registry&scope=repository:"+project+":pull,push", nil)
		req.SetBasicAuth(cred.Username, cred.Secret)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var body struct{ Token string }
		if resp.StatusCode != 200 || json.NewDecoder(resp.Body).Decode(&body) != nil {
			t.Fatalf("/jwt/auth: %d", resp.StatusCode)
		}
		payload, _ := base64.RawURLEncoding.DecodeString(strings.Split(body.Token, ".")[1])
		return string(payload)
	}
	if p := access("platform/app"); !strings.Contains(p, `"actions":["pull"]`) || !strings.Contains(p, `"auth_type":"oauth"`) {
		t.Fatalf("registry token for platform/app: %s", p)
	}
	if p := access("platform/secret"); !strings.Contains(p, `"access":[]`) {
		t.Fatalf("registry token for a project alice cannot read: %s", p)
	}
}

// TestDeveloperDockerNeedsARegistryScope: a login without a scope GitLab's registry honours
// gets no answer from docker-credential-gltoken but the one line saying which login would do,
// whether the host is the only one logged in to or named by GLTOKEN_HOST.
func TestDeveloperDockerNeedsARegistryScope(t *testing.T) {
	w := newDevWorld(t, nil)
	t.Cleanup(func() { stopAgent(t, w.sock) })
	done := approveWhenAsked(t, w.gl, w.alice, false)
	r := runWith(t, []string{"git-credential-gltoken", "login", "--host", w.gl.URL()}, w.env, "")
	done()
	if r.code != 0 {
		t.Fatalf("login: %+v", r)
	}
	want := "gltoken: no credential for registry.example.com: the login to " + w.gl.URL() + " has no registry scope (it has read_repository): run git-credential-gltoken login --host " + w.gl.URL() + " --scope read_registry (write_registry to push)\n"
	for _, host := range []string{"", w.gl.URL()} {
		env := map[string]string{"GLTOKEN_HOST": host}
		for k, v := range w.env {
			env[k] = v
		}
		r = runWith(t, []string{"docker-credential-gltoken", "get"}, env, "registry.example.com\n")
		if r.code != 1 || r.stdout != "credentials not found in native keychain\n" || r.stderr != want {
			t.Fatalf("GLTOKEN_HOST=%q: %+v\nwant stderr %q", host, r, want)
		}
	}
}

func TestLoginScopes(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"", "read_repository"},
		{"write_repository", "read_repository,write_repository"},
		{"read_registry", "read_repository,read_registry"},
		{"write_registry", "read_repository,read_registry,write_registry"},
		{"read_registry,write_registry", "read_repository,read_registry,write_registry"},
		{"api", "read_repository,api"},
	} {
		got, err := loginScopes(tc.in)
		if err != nil || strings.Join(got, ",") != tc.want {
			t.Errorf("loginScopes(%q) = %v, %v; want %s", tc.in, got, err, tc.want)
		}
	}
}

func TestDeveloperLoginDenied(t *testing.T) {
	w := newDevWorld(t, nil)
	t.Cleanup(func() { stopAgent(t, w.sock) })
	done := approveWhenAsked(t, w.gl, w.alice, true)
	r := runWith(t, []string{"git-credential-gltoken", "login", "--host", w.gl.URL()}, w.env, "")
	done()
	if r.code != 1 || !strings.HasSuffix(r.stderr, "gltoken: login to "+w.gl.URL()+" failed: cannot finish the device login: the login was denied at GitLab\n") {
		t.Fatalf("denied login: %+v", r)
	}
	if _, err := agent.NewClient(w.sock).Status(context.Background()); err == nil {
		t.Fatal("a denied login started an agent")
	}
}

func TestDeveloperLoginNeedsClientID(t *testing.T) {
	w := newDevWorld(t, nil)
	env := map[string]string{"GLTOKEN_AGENT_SOCKET": w.sock, "HOME": w.home}
	t.Setenv("GIT_CONFIG_GLOBAL", filepath.Join(w.home, ".gitconfig"))
	t.Setenv("GIT_CONFIG_NOSYSTEM", "1")
	r := runWith(t, []string{"git-credential-gltoken", "login", "--host", "https://GitLab.example.com"}, env, "")
	if r.code != 1 || !strings.Contains(r.stderr, "login needs the OAuth application's client id: pass --client-id ID") {
		t.Fatalf("%+v", r)
	}
	// git config gltoken.<url>.clientId is found for the host.
	if out, err := exec.Command("git", "config", "--global", "gltoken.https://gitlab.example.com.clientId", "abc123").CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	d := newDevSettings(func(k string) string { return env[k] }, func(string, ...any) {})
	d.host = "https://gitlab.example.com"
	if got := d.resolveClientID(context.Background()); got != "abc123" {
		t.Fatalf("client id from git config = %q", got)
	}
	r = runWith(t, []string{"git-credential-gltoken", "login", "--host", "http://gitlab.example.com", "--client-id", "x"}, env, "")
	if r.code != 1 || !strings.Contains(r.stderr, "plain http") {
		t.Fatalf("plain http login: %+v", r)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// testClock is a settable clock shared by the stand-in and the agent.
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *testClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *testClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// TestRefreshRaceTwentyGitFetches: 20 git fetches at once, at the access token's expiry,
// cause exactly one refresh at GitLab and no invalid_grant; every fetch succeeds.
func TestRefreshRaceTwentyGitFetches(t *testing.T) {
	clock := &testClock{t: time.Now()}
	w := newDevWorld(t, clock.Now)
	oc := &gitlaboauth.Client{Host: w.gl.URL(), ClientID: w.app.UID, Now: clock.Now}
	done := approveWhenAsked(t, w.gl, w.alice, false)
	g, err := oc.Device(context.Background(), []string{"read_repository"}, func(gitlaboauth.Prompt) {})
	done()
	if err != nil {
		t.Fatal(err)
	}
	srv, err := agent.NewServer(agent.Options{
		Oauth: func(host, clientID string) agent.Oauth {
			return &gitlaboauth.Client{Host: host, ClientID: clientID, Now: clock.Now}
		},
		Now: clock.Now,
	})
	if err != nil {
		t.Fatal(err)
	}
	l, err := agent.Listen(w.sock)
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Shutdown(context.Background()) })
	if _, err := agent.NewClient(w.sock).Put(context.Background(), g, false); err != nil {
		t.Fatal(err)
	}
	work := t.TempDir()
	if out, err := w.git(work, "clone", w.gl.URL()+"/platform/app.git"); err != nil {
		t.Fatalf("clone: %v\n%s", err, out)
	}

	clock.Add(7200 * time.Second) // the access token has just expired
	// A slow token endpoint (as over a real network) keeps every fetch waiting on the one refresh.
	w.gl.InjectFault(gitlabfake.Fault{Method: "POST", PathPrefix: "/oauth/token", Latency: time.Second})
	var wg sync.WaitGroup
	errs := make([]error, 20)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if out, err := w.git(filepath.Join(work, "app"), "fetch"); err != nil {
				errs[i] = fmt.Errorf("fetch %d: %v\n%s", i, err, out)
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	var refreshes, failures int
	for _, e := range w.gl.OAuthTokenEvents() {
		switch {
		case e.GrantType == "refresh_token" && e.Error == "":
			refreshes++
		case e.Error != "" && e.Error != "authorization_pending" && e.Error != "slow_down":
			failures++
			t.Errorf("GitLab answered %s to a %s grant", e.Error, e.GrantType)
		}
	}
	if refreshes != 1 || failures != 0 {
		t.Fatalf("refreshes = %d, failures = %d; want exactly one refresh", refreshes, failures)
	}
}

// TestDeveloperGoModDownload: the go command fetches a module of a private project through
// git and this helper after a login. The module path names the repository with its .git
// suffix, so go runs git directly (no ?go-get=1 request); git's insteadOf points the
// example host at the stand-in.
func TestDeveloperGoModDownload(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("go is not installed: %v", err)
	}
	w := newDevWorld(t, nil)
	t.Cleanup(func() { stopAgent(t, w.sock) })
	if err := w.gl.CommitFile("platform/lib", "go.mod", "module gitlab.example.com/platform/lib.git\n\ngo 1.22\n"); err != nil {
		t.Fatal(err)
	}
	if err := w.gl.CommitFile("platform/lib", "lib.go", "package lib\n\nconst Answer = 42\n"); err != nil {
		t.Fatal(err)
	}
	done := approveWhenAsked(t, w.gl, w.alice, false)
	r := runWith(t, []string{"git-credential-gltoken", "login", "--host", w.gl.URL()}, w.env, "")
	done()
	if r.code != 0 {
		t.Fatalf("login: %+v", r)
	}
	gitconfig := fmt.Sprintf("[credential \"%s\"]\n\thelper = gltoken\n[url \"%s/\"]\n\tinsteadOf = https://gitlab.example.com/\n", w.gl.URL(), w.gl.URL())
	if err := os.WriteFile(filepath.Join(w.home, ".gitconfig"), []byte(gitconfig), 0o600); err != nil {
		t.Fatal(err)
	}
	mod := t.TempDir()
	cmd := exec.Command(goBin, "mod", "download", "-json", "gitlab.example.com/platform/lib.git@latest")
	cmd.Dir = mod
	cmd.Env = append(w.gitEnv, "GOPRIVATE=gitlab.example.com", "GOPROXY=direct", "GONOSUMDB=gitlab.example.com",
		"GOMODCACHE="+filepath.Join(mod, "cache"), "GOFLAGS=-modcacherw", "GOPATH="+filepath.Join(mod, "gopath"), "GO111MODULE=on")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), `"Version"`) {
		t.Fatalf("go mod download: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "platform/lib.git@") {
		t.Fatalf("go mod download did not fetch the module:\n%s", out)
	}
}
