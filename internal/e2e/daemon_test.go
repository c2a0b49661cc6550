package e2e

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"gltoken.dev/gltoken/internal/gitlabfake"
	"gltoken.dev/gltoken/internal/syncbuf"
)

// TestVerificationThroughTheDaemon sends forged, stale and misaddressed ID
// tokens to a running daemon: each is refused with invalid_grant, says which
// check failed, and mints nothing.
func TestVerificationThroughTheDaemon(t *testing.T) {
	w := newWorld(t)
	d := w.startDaemon(t, daemonOpts{})
	good := func() map[string]any { return w.claims(t, w.job("main", true)) }
	kid, key := w.gl.SigningKey()

	hs256 := func() string {
		// HMAC "signed" with the RSA public key: the classic alg confusion.
		pub, _ := x509.MarshalPKIXPublicKey(&key.PublicKey)
		pemKey := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub})
		h, _ := json.Marshal(map[string]any{"alg": "HS256", "typ": "JWT", "kid": kid})
		p, _ := json.Marshal(good())
		in := b64(h) + "." + b64(p)
		m := hmac.New(sha256.New, pemKey)
		m.Write([]byte(in))
		return in + "." + b64(m.Sum(nil))
	}
	none := func() string {
		h, _ := json.Marshal(map[string]any{"alg": "none", "typ": "JWT", "kid": kid})
		p, _ := json.Marshal(good())
		return b64(h) + "." + b64(p) + "."
	}
	with := func(k string, v any) string {
		c := good()
		if v == nil {
			delete(c, k)
		} else {
			c[k] = v
		}
		return w.gl.SignClaims(c, nil)
	}
	now := time.Now().Unix()
	tests := []struct {
		name  string
		token string
		want  string
	}{
		{"alg none", none(), "alg"},
		{"HMAC with the public key", hs256(), "alg"},
		{"expired", with("exp", now-3600), "expired"},
		{"not yet valid", with("nbf", now+3600), "not yet valid"},
		{"wrong issuer", with("iss", "https://gitlab.evil.example"), "iss"},
		{"wrong audience", with("aud", "https://other.example.com"), "aud"},
		{"no audience", with("aud", nil), "aud"},
		{"jku header", w.gl.SignClaims(good(), map[string]any{"jku": "https://evil.example/keys"}), "jku"},
		{"x5c header", w.gl.SignClaims(good(), map[string]any{"x5c": []string{"MIIB"}}), "x5c"},
		{"garbage", "not.a.jwt", "malformed"},
		{"oversize", strings.Repeat("a", 20000) + ".b.c", "large"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := d.exchange(tt.token, w.gl.URL()+"/platform/lib.git", "read_repository")
			if resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, `"error":"invalid_grant"`) {
				t.Fatalf("status %d: %s", resp.StatusCode, body)
			}
			if !strings.Contains(strings.ToLower(body), strings.ToLower(tt.want)) {
				t.Errorf("error does not say which check failed (%q): %s", tt.want, body)
			}
		})
	}
	if n := len(w.liveMinted()); n != 0 {
		t.Fatalf("refused tokens minted %d credentials", n)
	}
	assertNoSecrets(t, "daemon log", d.logs.String())
}

// TestKeyRotationWhileRunning: GitLab starts signing with a new key; the
// daemon fetches the new JWKS on the unknown kid and keeps serving. A key
// GitLab dropped stops verifying once the daemon has seen the new key set.
func TestKeyRotationWhileRunning(t *testing.T) {
	w := newWorld(t)
	d := w.startDaemon(t, daemonOpts{})
	oldKid, oldKey := w.gl.SigningKey()
	oldToken := w.job("main", true)
	if resp, body := d.exchange(oldToken, w.gl.URL()+"/platform/lib.git", "read_repository"); resp.StatusCode != 200 {
		t.Fatalf("before rotation: %d %s", resp.StatusCode, body)
	}
	newKid := w.gl.AddSigningKey()
	w.gl.UseSigningKey(newKid)
	w.gl.DropSigningKey(oldKid)
	newToken := w.job("main", true)
	if resp, body := d.exchange(newToken, w.gl.URL()+"/platform/lib.git", "read_repository"); resp.StatusCode != 200 {
		t.Fatalf("after rotation: %d %s", resp.StatusCode, body)
	}
	// The refetch replaced the key set: the dropped key is gone with it.
	old := jwt.NewWithClaims(jwt.SigningMethodRS256, jwt.MapClaims(w.claims(t, w.job("main", true))))
	old.Header["kid"] = oldKid
	signed, err := old.SignedString(oldKey)
	if err != nil {
		t.Fatal(err)
	}
	resp, body := d.exchange(signed, w.gl.URL()+"/platform/lib.git", "read_repository")
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, "invalid_grant") {
		t.Fatalf("token of a dropped key: %d %s", resp.StatusCode, body)
	}
}

// TestPolicyReloadOnSIGHUP: a valid new policy takes effect; an invalid one
// is refused and the policy in force stays.
func TestPolicyReloadOnSIGHUP(t *testing.T) {
	w := newWorld(t)
	d := w.startDaemon(t, daemonOpts{})
	tok := w.job("main", true)
	lib := w.gl.URL() + "/platform/lib.git"
	other := w.gl.URL() + "/other/thing.git"
	if resp, _ := d.exchange(tok, other, "read_repository"); resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("other/thing allowed before the reload: %d", resp.StatusCode)
	}
	polPath := filepath.Join(w.dir, "policy.yaml")
	writeFile(t, polPath, e2ePolicy+`
  - name: other-thing
    match: {project_path: platform/app}
    allow: {projects: [other/thing], scopes: [read_repository]}
`, 0o600)
	hup(t, d)
	waitFor(t, "policy reload", func() bool { return strings.Contains(d.logs.String(), "policy reloaded") })
	if resp, body := d.exchange(tok, other, "read_repository"); resp.StatusCode != 200 {
		t.Fatalf("after reload: %d %s", resp.StatusCode, body)
	}
	writeFile(t, polPath, "rules:\n  - name: broken\n    match: {}\n", 0o600)
	hup(t, d)
	waitFor(t, "refused reload", func() bool { return strings.Contains(d.logs.String(), "policy reload refused") })
	if resp, body := d.exchange(tok, lib, "read_repository"); resp.StatusCode != 200 {
		t.Fatalf("after a refused reload the old policy should stay: %d %s", resp.StatusCode, body)
	}
}

// TestMetricsAndAudit checks the daemon's counters and its audit events.
func TestMetricsAndAudit(t *testing.T) {
	w := newWorld(t)
	d := w.startDaemon(t, daemonOpts{})
	tok := w.job("main", true)
	if resp, body := d.exchange(tok, w.gl.URL()+"/platform/lib.git", "read_repository"); resp.StatusCode != 200 {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	// The wire code stays RFC 8693's; the audit and the metrics say why.
	if resp, body := d.exchange(tok, w.gl.URL()+"/platform/secret.git", "read_repository"); resp.StatusCode != 400 || !strings.Contains(body, `"error":"invalid_target"`) {
		t.Fatalf("secret: %d %s", resp.StatusCode, body)
	}
	resp, err := d.httpClient().Get(d.base() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	m := string(b)
	for _, want := range []string{
		`gltoken_exchanges_total{kind="project_deploy_token",outcome="granted"} 1`,
		`gltoken_exchanges_total{kind="",outcome="denied"} 1`, // a policy denial (the client got invalid_target)
		`gltoken_mints_total{kind="project_deploy_token"} 1`,
		`gltoken_live_tokens 1`,
		`gltoken_jwks_refreshes_total`,
		`gltoken_exchange_duration_seconds_bucket`,
		`gltoken_gitlab_requests_total{route="POST /projects/:id/deploy_tokens",status="201"} 1`,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %s\n%s", want, grepLines(m, "gltoken_"))
		}
	}
	assertNoSecrets(t, "metrics", m)

	var granted map[string]any
	for _, line := range d.logs.Lines() {
		if strings.Contains(line, `"audit":"gltoken"`) && strings.Contains(line, `"outcome":"granted"`) {
			_ = json.Unmarshal([]byte(line), &granted)
		}
	}
	if granted == nil {
		t.Fatalf("no audit event for the grant:\n%s", d.logs.String())
	}
	for _, k := range []string{"request_id", "rule", "issuer", "sub", "project_id", "pipeline_id", "job_id", "ref", "resource", "scopes", "kind", "username", "expires_at", "secret_sha256", "duration_ms", "peer"} {
		if _, ok := granted[k]; !ok {
			t.Errorf("audit event lacks %q: %v", k, granted)
		}
	}
	assertNoSecrets(t, "daemon log", d.logs.String())
}

func hup(t *testing.T, d *daemon) {
	t.Helper()
	if err := d.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

// claims decodes a token's payload (the test's own token: no verification needed).
func (w *world) claims(t *testing.T, tok string) map[string]any {
	t.Helper()
	parts := strings.Split(tok, ".")
	raw, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var c map[string]any
	if err := json.Unmarshal(raw, &c); err != nil {
		t.Fatal(err)
	}
	return c
}

func grepLines(text, substr string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, substr) && !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestGitLabTroubles: while GitLab's API fails, the daemon still hands out
// what it has cached and answers new requests with 503 or 429 and a
// Retry-After; a lost create answer never leaves a second or a live token.
func TestGitLabTroubles(t *testing.T) {
	w := newWorld(t)
	d := w.startDaemon(t, daemonOpts{policy: perJobPolicy}) // the second job must mint, not share the first's
	lib := w.gl.URL() + "/platform/lib.git"
	cachedJob := w.job("main", true)
	if resp, body := d.exchange(cachedJob, lib, "read_repository"); resp.StatusCode != 200 {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}

	remove := w.gl.InjectFault(gitlabfake.Fault{PathPrefix: "/api/v4/", Status: http.StatusBadGateway})
	if resp, body := d.exchange(cachedJob, lib, "read_repository"); resp.StatusCode != 200 {
		t.Fatalf("cached credential while GitLab fails: %d %s", resp.StatusCode, body)
	}
	resp, body := d.exchange(w.job("main", true), lib, "read_repository")
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" || !strings.Contains(body, "temporarily_unavailable") {
		t.Fatalf("new mint while GitLab fails: %d %q %s", resp.StatusCode, resp.Header.Get("Retry-After"), body)
	}
	remove()

	// The create succeeds but its answer is lost: the daemon finds the token
	// by name and revokes it rather than creating a second one.
	before := len(w.gl.Tokens())
	remove = w.gl.InjectFault(gitlabfake.Fault{Method: "POST", PathPrefix: "/api/v4/projects/", LoseResponse: true, Status: http.StatusBadGateway, Times: 1})
	resp, body = d.exchange(w.job("main", true), lib, "read_repository")
	remove()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("lost create answer: %d %s", resp.StatusCode, body)
	}
	if created := len(w.gl.Tokens()) - before; created != 1 {
		t.Fatalf("a lost answer led to %d creates, want exactly 1", created)
	}
	if n := len(w.liveMinted()); n != 1 {
		t.Fatalf("live = %d, want only the first credential", n)
	}
	// And the client's retry succeeds.
	if resp, body := d.exchange(w.job("main", true), lib, "read_repository"); resp.StatusCode != 200 {
		t.Fatalf("retry: %d %s", resp.StatusCode, body)
	}

	// Last, as it holds the service token's calls for 7 s: GitLab's
	// throttle (429 with Retry-After) reaches the job as a 429 with GitLab's
	// wait.
	w.gl.InjectFault(gitlabfake.Fault{Method: "POST", PathPrefix: "/api/v4/projects/", Status: http.StatusTooManyRequests, RetryAfter: 7 * time.Second})
	resp, body = d.exchange(w.job("main", true), lib, "read_repository")
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") != "7" {
		t.Fatalf("GitLab rate limit: %d Retry-After %q %s", resp.StatusCode, resp.Header.Get("Retry-After"), body)
	}
}

// TestSocketActivation runs exchanged as systemd would with a .socket unit:
// the socket is made by the parent and passed as descriptor 3 with
// LISTEN_FDS and LISTEN_PID; git reaches the daemon through it.
func TestSocketActivation(t *testing.T) {
	w := newWorld(t)
	d := w.startDaemon(t, daemonOpts{}) // writes the configuration
	d.stop()
	cfg, _ := os.ReadFile(d.cfgPath)
	writeFile(t, d.cfgPath, strings.Replace(string(cfg), `listen: ["unix://`+d.sock+`"]`, `listen: ["systemd:"]`, 1), 0o600)

	ln, err := net.Listen("unix", d.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	f, err := ln.(*net.UnixListener).File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	d.logs = &syncbuf.Buffer{}
	d.cmd = exec.Command("sh", "-c", `LISTEN_PID=$$ LISTEN_FDS=1 exec "$0" serve --config "$1"`, filepath.Join(binDir, "exchanged"), d.cfgPath)
	d.cmd.ExtraFiles = []*os.File{f}
	d.cmd.Stdout, d.cmd.Stderr = d.logs, d.logs
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	d.done = make(chan struct{})
	go func() { _ = d.cmd.Wait(); close(d.done) }()
	waitFor(t, "the socket-activated daemon", func() bool {
		resp, err := d.httpClient().Get(d.base() + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	g := w.git(t, d, w.job("main", true))
	g.mustRun("", "clone", w.gl.URL()+"/platform/lib.git")
	d.stop()
	if _, err := os.Stat(d.sock); err != nil {
		t.Fatalf("the daemon removed the socket its unit owns: %v", err)
	}
}
