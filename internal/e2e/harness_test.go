// Package e2e runs the shipped binaries end to end: the real git (and a real
// registry client) through git-credential-gltoken, a real exchanged process,
// and the GitLab stand-in.
package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"gltoken.dev/gltoken/internal/gitlabfake"
	"gltoken.dev/gltoken/internal/syncbuf"
)

// binDir holds exchanged, git-credential-gltoken and the docker-credential-gltoken link,
// built once for the package.
var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "gltoken-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	build := exec.Command("go", "build", "-o", dir+"/", "gltoken.dev/gltoken/cmd/exchanged", "gltoken.dev/gltoken/cmd/git-credential-gltoken")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build binaries:", err)
		os.Exit(1)
	}
	if err := os.Symlink("git-credential-gltoken", filepath.Join(dir, "docker-credential-gltoken")); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

const audience = "https://gltoken.example.com"

// world is one GitLab stand-in with the projects every test uses, and a
// service account that may mint on them.
type world struct {
	gl       *gitlabfake.Server
	dir      string
	bot      *gitlabfake.User
	dev      *gitlabfake.User
	app      *gitlabfake.Project
	botToken string
}

func newWorld(t testing.TB) *world {
	t.Helper()
	return newWorldWith(t, gitlabfake.Options{})
}

// newWorldWith is newWorld on a stand-in started with opts.
func newWorldWith(t testing.TB, opts gitlabfake.Options) *world {
	t.Helper()
	gl := gitlabfake.Start(t, opts)
	w := &world{gl: gl, dir: t.TempDir()}
	w.app = gl.AddProject("platform/app")
	for _, p := range []string{"platform/lib", "platform/secret", "platform/deploy", "platform/tools/cli", "platform/tools/lint", "other/thing"} {
		gl.AddProject(p)
	}
	w.bot = gl.AddUser("gltoken-bot")
	gl.AddMember(w.bot, "platform", 50) // Owner: group deploy tokens need it
	gl.AddMember(w.bot, "other", 40)
	w.dev = gl.AddUser("alice")
	gl.AddMember(w.dev, "platform/app", 30)
	w.botToken = gl.CreatePersonalAccessToken(w.bot, "service-account", []string{"api"}, nil)
	return w
}

// job issues an ID token for a pipeline of platform/app.
func (w *world) job(ref string, protected bool, mod ...func(*gitlabfake.Job)) string {
	j := gitlabfake.Job{Project: w.app, User: w.dev, Ref: ref, RefType: "branch", RefProtected: protected,
		Audience: []string{audience}, Timeout: time.Hour}
	for _, m := range mod {
		m(&j)
	}
	return w.gl.IssueIDToken(j)
}

// perJobPolicy is e2ePolicy with reuse: job on every rule: one credential
// per job, for tests about one job's credential.
var perJobPolicy = strings.ReplaceAll(e2ePolicy, "\n    match:", "\n    reuse: job\n    match:")

const e2ePolicy = `
rules:
  - name: app-reads-libs
    match:
      project_path: platform/app
      ref_protected: "true"
    allow:
      projects: [platform/lib, platform/app]
      scopes: [read_repository, read_registry]
      ttl: 1h
  - name: app-pushes-deploy
    match:
      project_path: platform/app
      ref: main
      ref_protected: "true"
    allow:
      projects: [platform/deploy]
      scopes: [read_repository, write_repository]
      ttl: 15m
      access_level: developer
  - name: tools
    match:
      project_path: platform/app
      ref_protected: "true"
    allow:
      groups: [platform/tools]
      scopes: [read_repository]
      ttl: 1h
  - name: short
    match:
      project_path: platform/app
      ref: short-lived
    allow:
      projects: [platform/lib]
      scopes: [read_repository]
      ttl: 12s
`

// daemon is a running exchanged.
type daemon struct {
	t       testing.TB
	cfgPath string
	sock    string // the Unix socket, when it listens on one
	url     string // GLTOKEN_DAEMON for clients
	caFile  string // CA of its TLS certificate, when it speaks https
	dbPath  string
	cmd     *exec.Cmd
	logs    *syncbuf.Buffer
	done    chan struct{}
	env     []string // added to the process's environment
}

type daemonOpts struct {
	policy         string
	reaperInterval string
	extra          string // more configuration lines
	gitlab         string // more lines of the gitlab: section, each indented by two spaces
	registryURL    string // gitlab.registry_url
	name           string // configuration file name, for several daemons in one world (default exchanged)
	store          string // default {driver: sqlite, dsn: state.db}
	// listen is a tcp:// address; default a Unix socket. With caFile set
	// (and tls in extra) clients use https.
	listen string
	caFile string
	env    []string // more environment for the exchanged process
	// tokens, when set, are the service tokens of gitlab.token_files
	// (files sa-1, sa-2, …); default gitlab.token_file with the world's bot's.
	tokens []string
	// ledgerKey adds store.key_file: the world's ledger key (the same for
	// every daemon of the world), so shared credentials are sealed into the ledger.
	ledgerKey bool
}

// startDaemon writes a configuration in w.dir and starts exchanged on it.
func (w *world) startDaemon(t testing.TB, o daemonOpts) *daemon {
	t.Helper()
	if o.policy == "" {
		o.policy = e2ePolicy
	}
	if o.reaperInterval == "" {
		o.reaperInterval = "1s"
	}
	if o.name == "" {
		o.name = "exchanged"
	}
	if o.store == "" {
		o.store = "{driver: sqlite, dsn: state.db}"
	}
	writeFile(t, filepath.Join(w.dir, "policy.yaml"), o.policy, 0o600)
	tokenLine := "token_file: gitlab-token"
	if len(o.tokens) == 0 {
		writeFile(t, filepath.Join(w.dir, "gitlab-token"), w.botToken+"\n", 0o600)
	} else {
		var names []string
		for i, tok := range o.tokens {
			name := fmt.Sprintf("sa-%d", i+1)
			writeFile(t, filepath.Join(w.dir, name), tok+"\n", 0o600)
			names = append(names, name)
		}
		tokenLine = "token_files: [" + strings.Join(names, ", ") + "]"
	}
	if o.ledgerKey {
		key := filepath.Join(w.dir, "ledger.key")
		if _, err := os.Stat(key); err != nil {
			var k [32]byte
			_, _ = rand.Read(k[:])
			writeFile(t, key, "k1 "+base64.StdEncoding.EncodeToString(k[:])+"\n", 0o600)
		}
		o.store = strings.TrimSuffix(strings.TrimSpace(o.store), "}") + ", key_file: ledger.key}"
	}
	d := &daemon{t: t, cfgPath: filepath.Join(w.dir, o.name+".yaml"), dbPath: filepath.Join(w.dir, "state.db"), caFile: o.caFile, env: o.env}
	listen := o.listen
	if listen == "" {
		// Unix socket paths are limited to 108 bytes: keep the socket short.
		sockDir, err := os.MkdirTemp("", "gl-")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(sockDir) })
		d.sock = filepath.Join(sockDir, "x.sock")
		listen = "unix://" + d.sock
		d.url = listen
	} else if o.caFile != "" {
		d.url = "https://" + strings.TrimPrefix(listen, "tcp://")
	} else {
		d.url = "http://" + strings.TrimPrefix(listen, "tcp://")
	}
	cfg := fmt.Sprintf(`listen: [%q]
gitlab:
  url: %s
  %s
  registry_url: %q
%saudience: %s
policy_file: policy.yaml
store: %s
max_ttl: 12h
reaper_interval: %s
log_level: debug
%s`, listen, w.gl.URL(), tokenLine, o.registryURL, o.gitlab, audience, o.store, o.reaperInterval, o.extra)
	writeFile(t, d.cfgPath, cfg, 0o600)
	d.start()
	t.Cleanup(d.stop)
	return d
}

func (d *daemon) start() {
	d.t.Helper()
	d.logs = &syncbuf.Buffer{}
	d.cmd = exec.Command(filepath.Join(binDir, "exchanged"), "serve", "--config", d.cfgPath)
	if d.env != nil {
		d.cmd.Env = append(os.Environ(), d.env...)
	}
	d.cmd.Stdout, d.cmd.Stderr = d.logs, d.logs
	if err := d.cmd.Start(); err != nil {
		d.t.Fatal(err)
	}
	d.done = make(chan struct{})
	go func() { _ = d.cmd.Wait(); close(d.done) }()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if resp, err := d.httpClient().Get(d.base() + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		select {
		case <-d.done:
			d.t.Fatalf("exchanged exited during start-up:\n%s", d.logs.String())
		default:
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("exchanged not ready after 20s:\n%s", d.logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stop ends the daemon gracefully (SIGTERM) and checks it exited cleanly.
func (d *daemon) stop() {
	if d.cmd == nil || d.cmd.Process == nil {
		return
	}
	select {
	case <-d.done:
		return
	default:
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(30 * time.Second):
		_ = d.cmd.Process.Kill()
		<-d.done
		d.t.Errorf("exchanged did not stop within 30s of SIGTERM")
	}
}

// kill ends the daemon with SIGKILL, as a crash would.
func (d *daemon) kill() {
	_ = d.cmd.Process.Kill()
	<-d.done
}

func (d *daemon) daemonURL() string { return d.url }

// base is the URL prefix of the API for httpClient.
func (d *daemon) base() string {
	if d.sock != "" {
		return "http://gltoken"
	}
	return d.url
}

func (d *daemon) httpClient() *http.Client {
	tr := &http.Transport{}
	if d.sock != "" {
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			var dl net.Dialer
			return dl.DialContext(ctx, "unix", d.sock)
		}
	}
	if d.caFile != "" {
		pem, err := os.ReadFile(d.caFile)
		if err != nil {
			d.t.Fatal(err)
		}
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(pem)
		tr.TLSClientConfig = &tls.Config{RootCAs: pool}
	}
	return &http.Client{Timeout: 30 * time.Second, Transport: tr}
}

// exchange posts an RFC 8693 request straight to the daemon.
func (d *daemon) exchange(idToken, resource, scope string) (*http.Response, string) {
	d.t.Helper()
	form := url.Values{
		"grant_type":         {"urn:ietf:params:oauth:grant-type:token-exchange"},
		"subject_token":      {idToken},
		"subject_token_type": {"urn:ietf:params:oauth:token-type:jwt"},
		"resource":           {resource},
		"scope":              {scope},
	}
	resp, err := d.httpClient().PostForm(d.base()+"/v1/token", form)
	if err != nil {
		d.t.Fatal(err)
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	_, _ = b.ReadFrom(resp.Body)
	return resp, b.String()
}

// git runs the real git with only gltoken as credential helper.
type gitEnv struct {
	t       testing.TB
	home    string
	env     []string
	helper  string
	workDir string
}

func (w *world) git(t *testing.T, d *daemon, idToken string, extraEnv ...string) *gitEnv {
	t.Helper()
	home := t.TempDir()
	g := &gitEnv{t: t, home: home, workDir: t.TempDir(), helper: filepath.Join(binDir, "git-credential-gltoken")}
	g.env = append(os.Environ(),
		"HOME="+home,
		"XDG_CONFIG_HOME="+home,
		"GIT_CONFIG_NOSYSTEM=1",
		"GIT_TERMINAL_PROMPT=0",
		"GIT_ASKPASS=",
		"SSH_ASKPASS=",
		"GLTOKEN_ID_TOKEN="+idToken,
		"GLTOKEN_DAEMON="+d.daemonURL(),
	)
	g.env = append(g.env, extraEnv...)
	// The safety margin is lowered so that the short-lived rule's 12s
	// credentials are handed out.
	gitconfig := fmt.Sprintf(`[credential "%s"]
	helper = %s --margin 5s
	useHttpPath = true
[user]
	name = CI
	email = ci@example.com
[protocol "file"]
	allow = never
[init]
	defaultBranch = main
`, w.gl.URL(), g.helper)
	writeFile(t, filepath.Join(home, ".gitconfig"), gitconfig, 0o600)
	return g
}

// staticGit is git with a fixed credential, for setting up repositories.
func (w *world) staticGit(t *testing.T, user, secret string) *gitEnv {
	t.Helper()
	home := t.TempDir()
	g := &gitEnv{t: t, home: home, workDir: t.TempDir()}
	g.env = append(os.Environ(), "HOME="+home, "XDG_CONFIG_HOME="+home, "GIT_CONFIG_NOSYSTEM=1", "GIT_TERMINAL_PROMPT=0")
	gitconfig := fmt.Sprintf(`[credential]
	helper = "!f() { test \"$1\" = get && printf 'username=%s\\npassword=%s\\n'; }; f"
[user]
	name = Maintainer
	email = maintainer@example.com
[init]
	defaultBranch = main
`, user, secret)
	writeFile(t, filepath.Join(home, ".gitconfig"), gitconfig, 0o600)
	return g
}

// run runs git in dir and returns combined stdout and stderr.
func (g *gitEnv) run(dir string, args ...string) (string, error) {
	cmd := exec.Command("git", args...)
	cmd.Dir = dir
	if cmd.Dir == "" {
		cmd.Dir = g.workDir
	}
	cmd.Env = g.env
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (g *gitEnv) mustRun(dir string, args ...string) string {
	g.t.Helper()
	out, err := g.run(dir, args...)
	if err != nil {
		g.t.Fatalf("git %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func writeFile(t testing.TB, path, content string, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
}

// liveMinted lists the tokens gltoken minted that GitLab has not revoked or
// deleted (expired ones included: GitLab keeps those until someone deletes them).
func (w *world) liveMinted() []gitlabfake.TokenState {
	var out []gitlabfake.TokenState
	for _, tok := range w.gl.Tokens() {
		if strings.HasPrefix(tok.Name, "gltoken-") && !tok.Revoked && !tok.Deleted {
			out = append(out, tok)
		}
	}
	return out
}
