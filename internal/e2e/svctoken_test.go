package e2e

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"gltoken.dev/gltoken/internal/fingerprint"
)

// The daemon rotates a service token that expires within the lead time
// (default 7 days) as it starts, writes the successor to its file, and mints
// with it; SIGHUP with a file others can read is refused and changes nothing.
func TestServiceTokenRotatesItself(t *testing.T) {
	w := newWorld(t)
	exp := time.Now().Add(3 * 24 * time.Hour)
	w.botToken = w.gl.CreatePersonalAccessToken(w.bot, "service-account", []string{"api"}, &exp)
	old := w.botToken
	d := w.startDaemon(t, daemonOpts{})
	file := filepath.Join(w.dir, "gitlab-token")
	var next string
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		if next = strings.TrimSpace(string(b)); next != old {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the token file was not rotated:\n%s", d.logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if fi, _ := os.Stat(file); fi.Mode().Perm() != 0o600 {
		t.Fatalf("token file mode %v after rotation", fi.Mode())
	}
	var oldRevoked, nextActive bool
	for _, st := range w.gl.Tokens() {
		switch st.SecretSHA256 {
		case fingerprint.Of(old):
			oldRevoked = st.Revoked
		case fingerprint.Of(next):
			nextActive = !st.Revoked
			if st.ExpiresAt == nil || time.Until(*st.ExpiresAt) < 28*24*time.Hour {
				t.Fatalf("successor expiry %v, want about 30 days (rotation.lifetime)", st.ExpiresAt)
			}
		}
	}
	if !oldRevoked || !nextActive {
		t.Fatalf("GitLab: old revoked %v, successor active %v", oldRevoked, nextActive)
	}
	// Minting uses the successor.
	g := w.git(t, d, w.job("main", true))
	g.mustRun("", "clone", w.gl.URL()+"/platform/lib.git")

	// SIGHUP with a token file others can read: refused, named, nothing changes.
	if err := os.Chmod(file, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := d.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(10 * time.Second)
	for !strings.Contains(d.logs.String(), "0644") {
		if time.Now().After(deadline) {
			t.Fatalf("no error naming the mode after SIGHUP:\n%s", d.logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !strings.Contains(d.logs.String(), file) {
		t.Fatalf("the reload error does not name the file:\n%s", d.logs.String())
	}
	if resp, body := d.exchange(w.job("main", true), w.gl.URL()+"/platform/tools/cli.git", "read_repository"); resp.StatusCode != 200 {
		t.Fatalf("after a refused reload: %d %s", resp.StatusCode, body)
	}

	resp, err := d.httpClient().Get(d.base() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`gltoken_service_token_rotations_total\{outcome="rotated",token_file="[^"]+/gitlab-token"\} 1`,
		`gltoken_service_token_alert\{token="sha256:[0-9a-f]{16}",token_file="[^"]+"\} 0`, `gltoken_service_token_expiry_timestamp_seconds\{`,
		`gltoken_service_token_usable\{token="sha256:[0-9a-f]{16}",token_file="[^"]+"\} 1`} {
		if !regexp.MustCompile(`(?m)^` + want).Match(b) {
			t.Errorf("metrics lack %s\n%s", want, grepLines(string(b), "gltoken_service"))
		}
	}
	assertNoSecrets(t, "daemon log", d.logs.String())
}

// A service token GitLab stops accepting (revoked by an administrator): the
// job is told the daemon's GitLab token is invalid, not that the account lacks
// rights; once the daemon has asked GitLab about it (here on SIGHUP) /readyz
// answers 503 and the log says why.
func TestRejectedServiceToken(t *testing.T) {
	w := newWorld(t)
	d := w.startDaemon(t, daemonOpts{})
	st, ok := w.gl.TokenByName("service-account")
	if !ok {
		t.Fatal("no service-account token in the stand-in")
	}
	w.gl.RevokeToken(st.Kind, st.ID)

	resp, body := d.exchange(w.job("main", true), w.gl.URL()+"/platform/lib.git", "read_repository")
	if resp.StatusCode == http.StatusOK || !strings.Contains(body, "the daemon's GitLab token is invalid") || strings.Contains(body, "lacks the rights") {
		t.Fatalf("exchange with a revoked service token: %d %s", resp.StatusCode, body)
	}
	g := w.git(t, d, w.job("main", true))
	out, err := g.run("", "clone", w.gl.URL()+"/platform/lib.git")
	if err == nil || !strings.Contains(out, "the daemon's GitLab token is invalid") {
		t.Fatalf("git clone with a revoked service token: %v\n%s", err, out)
	}

	if err := d.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	var last string
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("last /readyz: %s\n%s", last, d.logs.String())
		}
	})
	waitFor(t, "/readyz to report the rejected token", func() bool {
		resp, err := d.httpClient().Get(d.base() + "/readyz")
		if err != nil {
			return false
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		last = fmt.Sprintf("%d %s", resp.StatusCode, b)
		// /readyz keeps the reason for the log (it answers anyone who asks).
		return resp.StatusCode == http.StatusServiceUnavailable &&
			strings.Contains(d.logs.String(), `/gitlab-token: GitLab rejects the service token`)
	})
	assertNoSecrets(t, "daemon log", d.logs.String())
}
