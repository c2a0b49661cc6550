// Command demo plays gltoken's whole flow on this machine: it builds the two
// binaries, starts the GitLab stand-in and exchanged (embedded ledger, the
// example policy from contrib/) in a temporary directory, and runs a CI job's
// git commands through git-credential-gltoken. It prints what happens, never
// a secret, and cleans up. Run it with `make demo`.
package main

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"gltoken.dev/gltoken/internal/gitlabfake"
	"gltoken.dev/gltoken/internal/syncbuf"
)

const audience = "https://gltoken.example.com"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "demo failed:", err)
		os.Exit(1)
	}
}

type demo struct {
	out   io.Writer
	dir   string
	bin   string
	gl    *gitlabfake.Server
	sock  string
	step  int
	steps int
}

func (d *demo) say(format string, args ...any) { fmt.Fprintf(d.out, format+"\n", args...) }

func (d *demo) heading(format string, args ...any) {
	d.step++
	fmt.Fprintf(d.out, "\n[%d/%d] %s\n", d.step, d.steps, fmt.Sprintf(format, args...))
}

func run(ctx context.Context, out io.Writer) error {
	root, err := repoRoot()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "gltoken-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	d := &demo{out: out, dir: dir, bin: filepath.Join(dir, "bin"), steps: 9}
	d.say("gltoken demo: a CI job of platform/app fetches other repositories with short-lived,")
	d.say("least-privileged GitLab credentials instead of a long-lived token. Working in %s.", dir)

	d.heading("Building exchanged and git-credential-gltoken")
	build := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", d.bin+"/", "./cmd/exchanged", "./cmd/git-credential-gltoken")
	build.Dir, build.Stdout, build.Stderr = root, out, out
	if err := build.Run(); err != nil {
		return fmt.Errorf("build: %w", err)
	}
	d.say("      built into %s", d.bin)

	d.heading("Starting a GitLab stand-in (the project's faithful fake of GitLab's API, JWKS and git over HTTP)")
	gl, err := gitlabfake.New(gitlabfake.Options{RepoRoot: filepath.Join(dir, "repos")})
	if err != nil {
		return err
	}
	defer gl.Close()
	d.gl = gl
	app := gl.AddProject("platform/app")
	for _, p := range []string{"platform/lib", "platform/secret"} {
		gl.AddProject(p)
	}
	bot := gl.AddUser("gltoken-bot")
	gl.AddMember(bot, "platform", 40)
	dev := gl.AddUser("alice")
	gl.AddMember(dev, "platform/app", 30)
	botToken := gl.CreatePersonalAccessToken(bot, "service-account", []string{"api"}, nil)
	d.say("      GitLab at %s with projects platform/app, platform/lib, platform/secret", gl.URL())
	d.say("      service account gltoken-bot: Maintainer of group platform; its token goes into a 0600 file")

	d.heading("Starting exchanged (Unix socket, embedded SQLite ledger, contrib/policy.yaml)")
	stopDaemon, logs, err := d.startDaemon(ctx, root, botToken)
	if err != nil {
		return err
	}
	defer stopDaemon()
	d.say("      listening on unix://%s", d.sock)
	d.say("      policy rule app-reads-libs: platform/app on a protected ref may read platform/lib (ttl 1h)")

	d.heading("GitLab starts a job of platform/app on protected branch main and signs its ID token")
	idToken := gl.IssueIDToken(gitlabfake.Job{Project: app, User: dev, Ref: "main", RefType: "branch", RefProtected: true,
		Audience: []string{audience}, Timeout: time.Hour})
	d.say("      id_tokens: GLTOKEN_ID_TOKEN: aud: %s", audience)
	d.say("      sub=project_path:platform/app:ref_type:branch:ref:main ref_protected=\"true\", valid 1h (the job timeout)")
	d.say("      The job's git config (what `git-credential-gltoken configure` writes):")
	d.say("        credential.%s.helper = gltoken", gl.URL())
	d.say("        credential.%s.useHttpPath = true", gl.URL())
	git := d.gitEnv(idToken)

	d.heading("The job clones platform/lib: allowed")
	d.say("      $ git clone %s/platform/lib.git", gl.URL())
	if o, err := git.run("", "clone", "--quiet", gl.URL()+"/platform/lib.git"); err != nil {
		return fmt.Errorf("clone platform/lib: %v\n%s", err, o)
	}
	files, _ := os.ReadDir(filepath.Join(d.dir, "work", "lib"))
	names := []string{}
	for _, f := range files {
		names = append(names, f.Name())
	}
	d.say("      cloned: lib/ contains %s", strings.Join(names, ", "))
	minted, ok := d.minted()
	if !ok {
		return errors.New("no credential was minted")
	}
	d.say("      exchanged minted the least-privileged credential for a read:")
	d.say("        kind      %s (%s)", minted.Kind, "project deploy token: no bot user, cannot call the API, expiry exact to the second")
	d.say("        name      %s (its ledger id)", minted.Name)
	d.say("        username  %s", minted.Username)
	d.say("        scopes    %s", strings.Join(minted.Scopes, " "))
	d.say("        expires   %s (in %s)", minted.ExpiresAt.UTC().Format(time.RFC3339), time.Until(*minted.ExpiresAt).Round(time.Second))
	d.say("        secret    sha256:%s… (the secret itself is never printed or logged)", minted.SecretSHA256[:16])
	d.say("      $ git -C lib fetch   (served from the daemon's cache: no second token)")
	if o, err := git.run(filepath.Join(d.dir, "work", "lib"), "fetch", "--quiet"); err != nil {
		return fmt.Errorf("fetch: %v\n%s", err, o)
	}

	d.heading("The job tries platform/secret: denied, and told why")
	d.say("      $ git clone %s/platform/secret.git", gl.URL())
	o, err := git.run("", "clone", "--quiet", gl.URL()+"/platform/secret.git")
	if err == nil {
		return errors.New("clone of platform/secret was allowed")
	}
	for _, line := range strings.Split(strings.TrimSpace(o), "\n") {
		d.say("      | %s", line)
	}

	d.heading("The job ends: its credential is revoked")
	d.say("      $ git credential reject   (what git does when a credential fails; the helper revokes it)")
	if err := d.reject(git, gl.URL()+"/platform/lib.git"); err != nil {
		return err
	}
	after, _ := gl.TokenByName(minted.Name)
	d.say("      %s in GitLab: deleted=%v", after.Name, after.Deleted)
	d.say("      Credentials nobody revokes are revoked by exchanged's reaper at their TTL,")
	d.say("      also after a crash: every mint is written to the ledger before GitLab is asked.")

	if err := d.developer(ctx, dev); err != nil {
		return err
	}

	d.say("\nexchanged's audit events (one per exchange and revocation; secrets only as SHA-256):")
	for _, line := range strings.Split(logs.String(), "\n") {
		if !strings.Contains(line, `"audit":"gltoken"`) {
			continue
		}
		var ev map[string]any
		if json.Unmarshal([]byte(line), &ev) != nil {
			continue
		}
		d.say("  %-10s %-14s rule=%v target=%v kind=%v reason=%v", ev["msg"], ev["outcome"], orDash(ev["rule"]), orDash(ev["target"]), orDash(ev["kind"]), orDash(ev["reason"]))
	}
	d.say("\nDone. Everything ran in %s and is removed now.", dir)
	return nil
}

// developer shows a person's path: a device login approved at the stand-in, git with the
// OAuth token, logout.
func (d *demo) developer(ctx context.Context, alice *gitlabfake.User) error {
	d.heading("A developer on a laptop logs in once (OAuth device flow; no personal access token)")
	app := d.gl.AddOAuthApplication("gltoken", []string{"http://127.0.0.1/"}, []string{"read_repository", "write_repository", "read_registry"}, false)
	d.say("      the administrator registered a non-confidential OAuth application; its id is the --client-id")
	home := filepath.Join(d.dir, "laptop")
	_ = os.MkdirAll(home, 0o700)
	helper := filepath.Join(d.bin, "git-credential-gltoken")
	gitconfig := fmt.Sprintf("[credential %q]\n\thelper = %s\n", d.gl.URL(), helper)
	_ = os.WriteFile(filepath.Join(home, ".gitconfig"), []byte(gitconfig), 0o600)
	sock := filepath.Join(d.dir, "agent", "agent.sock")
	env := append(os.Environ(), "HOME="+home, "XDG_CONFIG_HOME="+home, "GIT_CONFIG_NOSYSTEM=1", "GIT_TERMINAL_PROMPT=0",
		"GLTOKEN_ID_TOKEN=", "GITLAB_CI=", "GLTOKEN_AGENT_SOCKET="+sock, "XDG_STATE_HOME="+filepath.Join(home, "state"))
	defer func() { // the agent started on demand leaves with its last grant; make sure
		out, _ := exec.Command(helper, "status").Output()
		if i := strings.Index(string(out), "agent pid "); i >= 0 {
			var pid int
			if _, err := fmt.Sscanf(string(out[i:]), "agent pid %d", &pid); err == nil {
				_ = syscall.Kill(pid, syscall.SIGTERM)
			}
		}
	}()
	d.say("      $ git-credential-gltoken login --host %s --scope write_repository", d.gl.URL())
	login := exec.CommandContext(ctx, helper, "login", "--host", d.gl.URL(), "--client-id", app.UID, "--scope", "write_repository")
	login.Env = env
	stderr, err := login.StderrPipe()
	if err != nil {
		return err
	}
	if err := login.Start(); err != nil {
		return err
	}
	buf := make([]byte, 4096)
	var said strings.Builder
	approved := false
	for {
		n, err := stderr.Read(buf)
		said.Write(buf[:n])
		lines := strings.Split(said.String(), "\n")
		for _, l := range lines[:len(lines)-1] {
			d.say("      | %s", l)
			if i := strings.Index(l, "enter the code "); i >= 0 && !approved {
				code := strings.Fields(l[i+len("enter the code "):])[0]
				d.say("      (alice opens the page, signs in and approves the code %s)", code)
				resp, err := http.PostForm(d.gl.URL()+"/-/standin/oauth/device", url.Values{"user_code": {code}, "user": {alice.Username}, "action": {"approve"}})
				if err != nil {
					return err
				}
				resp.Body.Close()
				approved = true
			}
		}
		said.Reset()
		said.WriteString(lines[len(lines)-1])
		if err != nil {
			break
		}
	}
	if err := login.Wait(); err != nil {
		return fmt.Errorf("login: %w", err)
	}

	d.heading("git clone and push with the login; status; logout")
	git := &gitRunner{env: env, work: filepath.Join(d.dir, "laptop-work")}
	_ = os.MkdirAll(git.work, 0o700)
	d.say("      $ git clone %s/platform/app.git", d.gl.URL())
	if o, err := git.run("", "clone", "--quiet", d.gl.URL()+"/platform/app.git"); err != nil {
		return fmt.Errorf("clone platform/app: %v\n%s", err, o)
	}
	appDir := filepath.Join(git.work, "app")
	_ = os.WriteFile(filepath.Join(appDir, "notes.md"), []byte("hello\n"), 0o644)
	for _, args := range [][]string{{"add", "notes.md"}, {"-c", "user.name=Alice", "-c", "user.email=alice@example.com", "commit", "--quiet", "-m", "notes"}} {
		if o, err := git.run(appDir, args...); err != nil {
			return fmt.Errorf("git %v: %v\n%s", args, err, o)
		}
	}
	d.say("      $ git push origin HEAD:feature   (write_repository; username oauth2, the access token)")
	if o, err := git.run(appDir, "push", "--quiet", "origin", "HEAD:refs/heads/feature"); err != nil {
		return fmt.Errorf("push: %v\n%s", err, o)
	}
	d.say("      $ git-credential-gltoken status")
	st := exec.Command(helper, "status")
	st.Env = env
	o, _ := st.Output()
	for _, l := range strings.Split(strings.TrimSpace(string(o)), "\n") {
		d.say("      | %s", l)
	}
	d.say("      $ git-credential-gltoken logout")
	lo := exec.Command(helper, "logout")
	lo.Env = env
	o, err = lo.CombinedOutput()
	if err != nil {
		return fmt.Errorf("logout: %v\n%s", err, o)
	}
	d.say("      | %s", strings.TrimSpace(string(o)))
	d.say("      $ git fetch   (after logout: one line says what to do)")
	o2, err := git.run(appDir, "fetch", "--quiet")
	if err == nil {
		return errors.New("fetch after logout succeeded")
	}
	for _, l := range strings.Split(strings.TrimSpace(o2), "\n") {
		if strings.HasPrefix(l, "gltoken:") {
			d.say("      | %s", l)
		}
	}
	return nil
}

func orDash(v any) any {
	if v == nil || v == "" {
		return "-"
	}
	return v
}

// startDaemon writes exchanged.yaml next to the example policy and runs it.
func (d *demo) startDaemon(ctx context.Context, root, botToken string) (stop func(), logs *syncbuf.Buffer, err error) {
	pol, err := os.ReadFile(filepath.Join(root, "contrib", "policy.yaml"))
	if err != nil {
		return nil, nil, err
	}
	sockDir, err := os.MkdirTemp("", "gl-")
	if err != nil {
		return nil, nil, err
	}
	d.sock = filepath.Join(sockDir, "exchanged.sock")
	cfg := fmt.Sprintf(`listen: ["unix://%s"]
gitlab: {url: %q, token_file: gitlab-token}
audience: %s
policy_file: policy.yaml
store: {driver: sqlite, dsn: state.db}
max_ttl: 12h
`, d.sock, d.gl.URL(), audience)
	for name, data := range map[string]string{"exchanged.yaml": cfg, "policy.yaml": string(pol), "gitlab-token": botToken + "\n"} {
		if err := os.WriteFile(filepath.Join(d.dir, name), []byte(data), 0o600); err != nil {
			return nil, nil, err
		}
	}
	logs = &syncbuf.Buffer{} // exec writes the daemon's output while the demo reads it
	cmd := exec.CommandContext(ctx, filepath.Join(d.bin, "exchanged"), "serve", "--config", filepath.Join(d.dir, "exchanged.yaml"))
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		return nil, nil, err
	}
	stop = func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
		os.RemoveAll(sockDir)
	}
	hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", d.sock)
	}}}
	for deadline := time.Now().Add(20 * time.Second); ; {
		if resp, err := hc.Get("http://gltoken/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return stop, logs, nil
			}
		}
		if time.Now().After(deadline) {
			stop()
			return nil, nil, fmt.Errorf("exchanged did not become ready:\n%s", logs)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// gitRunner runs git as the CI job would: its own HOME, gltoken as the
// credential helper for the GitLab host, the ID token in GLTOKEN_ID_TOKEN and
// the daemon's socket in GLTOKEN_DAEMON.
type gitRunner struct {
	env  []string
	work string
}

func (d *demo) gitEnv(idToken string) *gitRunner {
	home := filepath.Join(d.dir, "home")
	g := &gitRunner{work: filepath.Join(d.dir, "work")}
	_ = os.MkdirAll(home, 0o700)
	_ = os.MkdirAll(g.work, 0o700)
	gitconfig := fmt.Sprintf("[credential %q]\n\thelper = %s\n\tuseHttpPath = true\n", d.gl.URL(), filepath.Join(d.bin, "git-credential-gltoken"))
	_ = os.WriteFile(filepath.Join(home, ".gitconfig"), []byte(gitconfig), 0o600)
	g.env = append(os.Environ(), "HOME="+home, "XDG_CONFIG_HOME="+home, "GIT_CONFIG_NOSYSTEM=1", "GIT_TERMINAL_PROMPT=0",
		"GLTOKEN_ID_TOKEN="+idToken, "GLTOKEN_DAEMON=unix://"+d.sock)
	return g
}

// run runs git in dir (the work directory when empty) and returns its
// combined output.
func (g *gitRunner) run(dir string, args ...string) (string, error) {
	cmd := exec.Command("git", args...)
	cmd.Dir, cmd.Env = cmp.Or(dir, g.work), g.env
	o, err := cmd.CombinedOutput()
	return string(o), err
}

// pipe runs git with stdin and returns its stdout only.
func (g *gitRunner) pipe(stdin string, args ...string) (string, error) {
	cmd := exec.Command("git", args...)
	cmd.Dir, cmd.Env, cmd.Stdin = g.work, g.env, strings.NewReader(stdin)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%v: %s", err, strings.TrimSpace(e.String()))
	}
	return o.String(), nil
}

// reject asks git for the credential and hands it straight back as failed,
// so the helper revokes it. The secret passes from git to git, unprinted.
func (d *demo) reject(git *gitRunner, repo string) error {
	u, err := url.Parse(repo)
	if err != nil {
		return err
	}
	desc := fmt.Sprintf("protocol=%s\nhost=%s\npath=%s\n\n", u.Scheme, u.Host, strings.TrimPrefix(u.Path, "/"))
	fill, err := git.pipe(desc, "credential", "fill")
	if err != nil {
		return fmt.Errorf("git credential fill: %w", err)
	}
	if _, err := git.pipe(fill+"\n", "credential", "reject"); err != nil {
		return fmt.Errorf("git credential reject: %w", err)
	}
	return nil
}

// minted returns the credential gltoken minted, as GitLab sees it.
func (d *demo) minted() (gitlabfake.TokenState, bool) {
	for _, t := range d.gl.Tokens() {
		if strings.HasPrefix(t.Name, "gltoken-") && !t.Revoked && !t.Deleted {
			return t, true
		}
	}
	return gitlabfake.TokenState{}, false
}

func repoRoot() (string, error) {
	o, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}").Output()
	if err != nil {
		return "", fmt.Errorf("find the module root (run the demo from the repository): %w", err)
	}
	return strings.TrimSpace(string(o)), nil
}
