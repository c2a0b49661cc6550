package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"gltoken.dev/gltoken/internal/gitlabfake"
)

// developer is a person's laptop: the real git-credential-gltoken, its agent on a socket of
// its own, and no ID token anywhere.
type developer struct {
	t    *testing.T
	gl   *gitlabfake.Server
	user *gitlabfake.User
	env  []string // what any process of hers sees (a registry client too)
	home string   // the HOME of the helper's own commands
}

func newDeveloper(t *testing.T, gl *gitlabfake.Server, u *gitlabfake.User) *developer {
	t.Helper()
	app := gl.AddOAuthApplication("gltoken", []string{"http://127.0.0.1/"}, []string{"read_repository", "write_repository", "read_registry", "write_registry"}, false)
	sockDir, err := os.MkdirTemp("", "gla-") // socket paths are limited to 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(sockDir, 0o700); err != nil {
		t.Fatal(err)
	}
	d := &developer{t: t, gl: gl, user: u, env: []string{
		"GLTOKEN_AGENT_SOCKET=" + filepath.Join(sockDir, "agent.sock"), "GLTOKEN_CLIENT_ID=" + app.UID,
		"GLTOKEN_ID_TOKEN=", "GLTOKEN_ID_TOKEN_FILE=", "GITLAB_CI=", "GLTOKEN_HOST=",
	}, home: t.TempDir()}
	t.Cleanup(func() {
		d.helper("logout") // the agent leaves with its last grant
		if out, err := d.helper("status"); err == nil {
			if i := strings.Index(out, "agent pid "); i >= 0 {
				if pid, err := strconv.Atoi(strings.Fields(out[i+len("agent pid "):])[0]); err == nil {
					_ = syscall.Kill(pid, syscall.SIGTERM)
				}
			}
		}
		os.RemoveAll(sockDir)
	})
	return d
}

// helper runs git-credential-gltoken with the developer's environment.
func (d *developer) helper(args ...string) (string, error) {
	cmd := exec.Command(filepath.Join(binDir, "git-credential-gltoken"), args...)
	cmd.Env = append(append(os.Environ(), d.env...), "HOME="+d.home)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// login logs in with the device flow, the code approved at the stand-in as the user would.
func (d *developer) login(scope string) {
	d.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	approved := make(chan error, 1)
	go func() {
		for {
			for _, code := range d.gl.PendingDeviceCodes() {
				approved <- d.gl.ApproveDevice(code, d.user)
				return
			}
			select {
			case <-ctx.Done():
				approved <- nil
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	args := []string{"login", "--host", d.gl.URL()}
	if scope != "" {
		args = append(args, "--scope", scope)
	}
	out, err := d.helper(args...)
	cancel()
	if aerr := <-approved; aerr != nil {
		d.t.Fatal(aerr)
	}
	if err != nil {
		d.t.Fatalf("login: %v\n%s", err, out)
	}
}

// TestDeveloperRegistryThroughLogin: a developer logs in once (device flow, approved at the
// stand-in) with write_registry; the real skopeo then pushes an image to the real registry and
// pulls it back through docker-credential-gltoken, which answers the OAuth access token as
// oauth2 (GitLab's /jwt/auth takes it, with the token's scopes and the person's role). A
// project she is no member of stays closed. A login without a registry scope is refused by
// the helper with the one line that says which login would do.
func TestDeveloperRegistryThroughLogin(t *testing.T) {
	w := newWorld(t)
	p := newPKI(t, w.dir)
	reg := startRegistry(t, w, p)
	dev := newDeveloper(t, w.gl, w.dev) // alice: Developer of platform/app, nothing on platform/secret
	dev.login("write_registry")
	if out, err := dev.helper("status"); err != nil || !strings.Contains(out, "scopes:  read_repository, read_registry, write_registry") {
		t.Fatalf("status after login: %v\n%s", err, out)
	}

	env := registryClientEnv(t, reg, dev.env...)
	image := ociImage(t)
	if out, err := skopeoRun(t, env, "copy", "--dest-cert-dir", reg.certDir, "oci:"+image+":v1", "docker://"+reg.host+"/platform/app:v1"); err != nil {
		t.Fatalf("push through the login: %v\n%s", err, out)
	}
	dest := filepath.Join(t.TempDir(), "pulled")
	if out, err := skopeoRun(t, env, "copy", "--src-cert-dir", reg.certDir, "docker://"+reg.host+"/platform/app:v1", "dir:"+dest); err != nil {
		t.Fatalf("pull through the login: %v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(dest, "manifest.json")); err != nil {
		t.Fatalf("pulled image has no manifest: %v", err)
	}
	out, err := skopeoRun(t, env, "copy", "--dest-cert-dir", reg.certDir, "oci:"+image+":v1", "docker://"+reg.host+"/platform/secret:v1")
	if err == nil || !strings.Contains(out, "denied") {
		t.Fatalf("pushed to a project alice is no member of (err %v):\n%s", err, out)
	}
	assertNoSecrets(t, "skopeo output", out)

	// A login for git only: the registry login is refused with the advice, on stderr.
	dev.login("")
	out, err = skopeoRun(t, env, "copy", "--src-cert-dir", reg.certDir, "docker://"+reg.host+"/platform/app:v1", "dir:"+filepath.Join(t.TempDir(), "x"))
	advice := "gltoken: no credential for " + reg.host + ": the login to " + w.gl.URL() + " has no registry scope (it has read_repository): run git-credential-gltoken login --host " + w.gl.URL() + " --scope read_registry (write_registry to push)\n"
	if err == nil || !strings.Contains(out, advice) {
		t.Fatalf("pull with a git-only login (err %v) does not say which login would do (want %q):\n%s", err, advice, out)
	}
}
