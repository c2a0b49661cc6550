package credhelper

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"gltoken.dev/gltoken/internal/client"
	"gltoken.dev/gltoken/internal/fingerprint"
	"gltoken.dev/gltoken/internal/idtoken"
)

const (
	testIDToken = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJwcm9qZWN0X3BhdGg6cGxhdGZvcm0vYXBwIn0.c2ln"
	testSecret  = "gldt-s3cr3t-token"
	getInput    = "protocol=https\nhost=gitlab.example.com\npath=platform/lib.git\n\n"
)

// call is one request the fake daemon got.
type call struct {
	path string
	form url.Values
}

// fakeDaemon stands in for exchanged's HTTP API.
type fakeDaemon struct {
	mu    sync.Mutex
	calls []call
	// answer writes the n-th (from 1) answer to /v1/token.
	answer func(w http.ResponseWriter, n int)
}

func (f *fakeDaemon) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.ParseForm() != nil {
		http.Error(w, "bad request", 400)
		return
	}
	f.mu.Lock()
	f.calls = append(f.calls, call{r.URL.Path, r.PostForm})
	n := 0
	for _, c := range f.calls {
		if c.path == r.URL.Path {
			n++
		}
	}
	f.mu.Unlock()
	switch r.URL.Path {
	case "/v1/token":
		f.answer(w, n)
	case "/v1/revoke":
		w.WriteHeader(200)
	default:
		http.Error(w, "not implemented", http.StatusNotImplemented)
	}
}

func (f *fakeDaemon) Calls() []call {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]call(nil), f.calls...)
}

func grant(expiresIn int, token string) func(http.ResponseWriter, int) {
	return func(w http.ResponseWriter, _ int) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		w.Header().Set("X-Request-Id", "req-ok")
		fmt.Fprintf(w, `{"access_token":%q,"issued_token_type":"urn:ietf:params:oauth:token-type:access_token","token_type":"N_A","expires_in":%d,"scope":"read_repository","username":"gitlab+deploy-token-42"}`, token, expiresIn)
	}
}

func deny(status int, code, desc, reqID string) func(http.ResponseWriter, int) {
	return func(w http.ResponseWriter, _ int) {
		w.Header().Set("Content-Type", "application/json")
		if reqID != "" {
			w.Header().Set("X-Request-Id", reqID)
		}
		w.WriteHeader(status)
		fmt.Fprintf(w, `{"error":%q,"error_description":%q}`, code, desc)
	}
}

// unixDaemon serves f on a Unix socket and returns its URL.
func unixDaemon(tb testing.TB, f *fakeDaemon) string {
	tb.Helper()
	dir, err := os.MkdirTemp("", "gcg") // short: socket paths are limited to ~108 bytes
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "exchanged.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		tb.Fatal(err)
	}
	srv := &http.Server{Handler: f}
	go srv.Serve(l)
	tb.Cleanup(func() { srv.Close() })
	return "unix://" + sock
}

type result struct {
	code           int
	stdout, stderr string
}

func runWith(t testing.TB, args []string, env map[string]string, stdin string) result {
	t.Helper()
	var out, errOut bytes.Buffer
	getenv := func(k string) string {
		if k == "GLTOKEN_AGENT_SOCKET" && env[k] == "" {
			return "/nonexistent/gltoken-agent.sock" // never a real agent of this machine
		}
		return env[k]
	}
	code := Run(context.Background(), "dev", args, getenv, strings.NewReader(stdin), &out, &errOut)
	return result{code, out.String(), errOut.String()}
}

// checkGitAnswer checks the exact answer, with an expiry between the
// clock readings taken around the run.
func checkGitAnswer(t *testing.T, got string, before, after time.Time, expiresIn int64, user, pass string) {
	t.Helper()
	m := regexp.MustCompile(`\A` + regexp.QuoteMeta("username="+user+"\npassword="+pass+"\n") + `password_expiry_utc=(\d+)\n\z`).FindStringSubmatch(got)
	if m == nil {
		t.Fatalf("stdout = %q", got)
	}
	exp, _ := strconv.ParseInt(m[1], 10, 64)
	if exp < before.Unix()+expiresIn || exp > after.Unix()+expiresIn {
		t.Fatalf("password_expiry_utc = %d, want %d..%d", exp, before.Unix()+expiresIn, after.Unix()+expiresIn)
	}
}

func wantForm(resource, scope string) url.Values {
	return url.Values{
		"grant_type":         {"urn:ietf:params:oauth:grant-type:token-exchange"},
		"subject_token":      {testIDToken},
		"subject_token_type": {"urn:ietf:params:oauth:token-type:jwt"},
		"resource":           {resource},
		"scope":              {scope},
	}
}

func TestGetOverUnixSocket(t *testing.T) {
	fd := &fakeDaemon{answer: grant(3599, testSecret)}
	env := map[string]string{"GLTOKEN_DAEMON": unixDaemon(t, fd), "GLTOKEN_ID_TOKEN": testIDToken}
	before := time.Now()
	r := runWith(t, []string{"git-credential-gltoken", "get"}, env, getInput)
	after := time.Now()
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("code %d, stderr %q", r.code, r.stderr)
	}
	checkGitAnswer(t, r.stdout, before, after, 3599, "gitlab+deploy-token-42", testSecret)
	calls := fd.Calls()
	if len(calls) != 1 || calls[0].path != "/v1/token" {
		t.Fatalf("calls = %+v", calls)
	}
	if got, want := fmt.Sprint(calls[0].form), fmt.Sprint(wantForm("https://gitlab.example.com/platform/lib.git", "read_repository")); got != want {
		t.Fatalf("form = %s, want %s", got, want)
	}
}

func TestGetOverLoopbackHTTPWithFlags(t *testing.T) {
	fd := &fakeDaemon{answer: grant(600, testSecret)}
	srv := httptest.NewServer(fd)
	t.Cleanup(srv.Close)
	env := map[string]string{"CI_JOB_JWT": testIDToken, "GLTOKEN_DAEMON": "unix:///nonexistent.sock"}
	before := time.Now()
	r := runWith(t, []string{"/usr/local/bin/git-credential-gltoken", "--daemon", srv.URL, "--id-token-env", "CI_JOB_JWT", "--scope", "read_repository, write_repository,read_repository", "get"}, env,
		"capability[]=authtype\nprotocol=https\nhost=gitlab.example.com:8443\npath=a/b/c.git\nwwwauth[]=Basic realm=\"GitLab\"\nfuture_key=x\n")
	after := time.Now()
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("code %d, stderr %q", r.code, r.stderr)
	}
	checkGitAnswer(t, r.stdout, before, after, 600, "gitlab+deploy-token-42", testSecret)
	if got, want := fmt.Sprint(fd.Calls()[0].form), fmt.Sprint(wantForm("https://gitlab.example.com:8443/a/b/c.git", "read_repository write_repository")); got != want {
		t.Fatalf("form = %s, want %s", got, want)
	}
}

func TestGetIDTokenFile(t *testing.T) {
	fd := &fakeDaemon{answer: grant(3599, testSecret)}
	f := filepath.Join(t.TempDir(), "id_token")
	if err := os.WriteFile(f, []byte(testIDToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r := runWith(t, []string{"git-credential-gltoken", "--id-token-file", f, "get"}, map[string]string{"GLTOKEN_DAEMON": unixDaemon(t, fd)}, getInput)
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("code %d, stderr %q", r.code, r.stderr)
	}
	if got := fd.Calls()[0].form.Get("subject_token"); got != testIDToken {
		t.Fatalf("subject_token = %q", got)
	}
}

// TestIDTokenAdvice: the aud advice only where the daemon says the audience
// was refused, the timeout advice only where the token expired, both when
// both failed. The descriptions are the daemon's: "the ID token was
// refused: " and the verifier's error, whose check names are idtoken's.
func TestIDTokenAdvice(t *testing.T) {
	refused := func(checks ...error) string {
		names := make([]string, len(checks))
		for i, c := range checks {
			names[i] = c.Error()
		}
		return "the ID token was refused: " + strings.Join(names, ", ") + ": detail"
	}
	const aud = "check that its aud (id_tokens: … aud:) is the daemon's audience"
	const outlived = "the job has outlived it (an ID token lives as long as the job's timeout)"
	const logs = "the job's ID token was refused; the daemon's log has the detail under the request id"
	tests := []struct {
		name, description, want string
	}{
		{"audience", refused(idtoken.ErrAudience), "the job's ID token was refused: " + aud},
		{"expired", refused(idtoken.ErrExpired), "the job's ID token was refused: " + outlived},
		{"both", refused(idtoken.ErrAudience, idtoken.ErrExpired), "the job's ID token was refused: " + aud + "; and " + outlived},
		{"issuer that contains aud", `the ID token was refused: ` + idtoken.ErrIssuer.Error() + `: iss "https://gitlab.audit.example", want "https://gitlab.example.com"`, logs},
		{"signature", refused(idtoken.ErrSignature), logs},
		{"not yet valid", refused(idtoken.ErrNotYetValid), logs},
		{"job no longer running", `the ID token's job 12 is no longer running (GitLab says success), and rule "audited" requires a running job`, logs},
		{"too short a life", "the credential would live only 5s (the ID token expires in 5s); at least 10s is needed", logs},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := advice(&client.Error{Status: 400, Code: "invalid_grant", Description: tt.description}); got != tt.want {
				t.Errorf("advice = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestGetFailures(t *testing.T) {
	tests := []struct {
		name       string
		args       []string
		env        map[string]string // GLTOKEN_DAEMON is added
		stdin      string
		answer     func(http.ResponseWriter, int)
		wantStderr string
		wantCalls  int
	}{
		{
			name:       "denied with description and request id",
			env:        map[string]string{"GLTOKEN_ID_TOKEN": testIDToken},
			stdin:      getInput,
			answer:     deny(400, "invalid_target", "no rule lets platform/app read platform/lib", "r-42"),
			wantStderr: "gltoken: no credential for https://gitlab.example.com/platform/lib.git: no rule lets platform/app read platform/lib (request id r-42); the trust policy does not grant this job that resource: ask the gltoken administrator for a rule (exchanged explain shows which check failed)\n",
			wantCalls:  1,
		},
		{
			name:       "expired ID token",
			env:        map[string]string{"GLTOKEN_ID_TOKEN": testIDToken},
			stdin:      getInput,
			answer:     deny(400, "invalid_grant", "the ID token was refused: token expired: exp 2026-12-02T10:00:00Z is before now 2026-12-02T10:05:00Z (leeway 1m0s)", ""),
			wantStderr: "gltoken: no credential for https://gitlab.example.com/platform/lib.git: the ID token was refused: token expired: exp 2026-12-02T10:00:00Z is before now 2026-12-02T10:05:00Z (leeway 1m0s); the job's ID token was refused: the job has outlived it (an ID token lives as long as the job's timeout)\n",
			wantCalls:  1,
		},
		{
			name:       "wrong audience",
			env:        map[string]string{"GLTOKEN_ID_TOKEN": testIDToken},
			stdin:      getInput,
			answer:     deny(400, "invalid_grant", `audience not accepted: aud ["x"] does not contain "https://gltoken.example.com"`, ""),
			wantStderr: "gltoken: no credential for https://gitlab.example.com/platform/lib.git: audience not accepted: aud [\"x\"] does not contain \"https://gltoken.example.com\"; the job's ID token was refused: check that its aud (id_tokens: … aud:) is the daemon's audience\n",
			wantCalls:  1,
		},
		{
			name:       "bad signature",
			env:        map[string]string{"GLTOKEN_ID_TOKEN": testIDToken},
			stdin:      getInput,
			answer:     deny(400, "invalid_grant", "signature invalid", ""),
			wantStderr: "gltoken: no credential for https://gitlab.example.com/platform/lib.git: signature invalid; the job's ID token was refused; the daemon's log has the detail under the request id\n",
			wantCalls:  1,
		},
		{
			name:       "missing path",
			env:        map[string]string{"GLTOKEN_ID_TOKEN": testIDToken},
			stdin:      "protocol=https\nhost=gitlab.example.com\n\n",
			wantStderr: "gltoken: git sent no repository path for https://gitlab.example.com, so gltoken cannot tell which repository to ask for; run: git config --global credential.https://gitlab.example.com.useHttpPath true\n",
		},
		{
			name:       "missing ID token, not logged in",
			env:        map[string]string{},
			stdin:      getInput,
			wantStderr: "gltoken: not logged in to https://gitlab.example.com and no ID token ($GLTOKEN_ID_TOKEN is not set): run git-credential-gltoken login --host https://gitlab.example.com\n",
		},
		{
			name:       "missing ID token in a CI job",
			env:        map[string]string{"GITLAB_CI": "true"},
			stdin:      getInput,
			wantStderr: "gltoken: no ID token: GLTOKEN_ID_TOKEN is not set; declare it in the CI job with the id_tokens: keyword (id_tokens: {GLTOKEN_ID_TOKEN: {aud: <the daemon's audience>}}) or point --id-token-file (GLTOKEN_ID_TOKEN_FILE) at a file holding it\n",
		},
		{
			name:       "missing ID token in a named variable",
			args:       []string{"--id-token-env", "MY_TOKEN"},
			env:        map[string]string{"GLTOKEN_ID_TOKEN": testIDToken, "GITLAB_CI": "true"},
			stdin:      getInput,
			wantStderr: "gltoken: no ID token: MY_TOKEN is not set; declare it in the CI job with the id_tokens: keyword (id_tokens: {MY_TOKEN: {aud: <the daemon's audience>}}) or point --id-token-file (GLTOKEN_ID_TOKEN_FILE) at a file holding it\n",
		},
		{
			name:       "LF in the returned token",
			env:        map[string]string{"GLTOKEN_ID_TOKEN": testIDToken},
			stdin:      getInput,
			answer:     grant(3599, "gldt-a\nprotocol=evil"),
			wantStderr: "gltoken: no credential for https://gitlab.example.com/platform/lib.git: the daemon's answer cannot be given to git: password: credential value contains CR, LF or NUL (request id req-ok); report this to the gltoken administrator\n",
			wantCalls:  1,
		},
		{
			name:       "CR in the returned token",
			env:        map[string]string{"GLTOKEN_ID_TOKEN": testIDToken},
			stdin:      getInput,
			answer:     grant(3599, "gldt-a\r"),
			wantStderr: "gltoken: no credential for https://gitlab.example.com/platform/lib.git: the daemon's answer cannot be given to git: password: credential value contains CR, LF or NUL (request id req-ok); report this to the gltoken administrator\n",
			wantCalls:  1,
		},
		{
			name:       "shorter than the margin",
			env:        map[string]string{"GLTOKEN_ID_TOKEN": testIDToken},
			stdin:      getInput,
			answer:     grant(30, testSecret),
			wantStderr: "gltoken: no credential for https://gitlab.example.com/platform/lib.git: the daemon's credential expires in 30s, less than the 1m0s safety margin (request id req-ok); the policy rule's ttl or the job's ID token (its timeout) is too short for it: lengthen one, or lower --margin\n",
			wantCalls:  1, // asking again would only mint a second short token
		},
		{
			name:  "rate limited",
			env:   map[string]string{"GLTOKEN_ID_TOKEN": testIDToken},
			stdin: getInput,
			answer: func(w http.ResponseWriter, n int) {
				w.Header().Set("Retry-After", "30")
				deny(429, "slow_down", "too many requests", "r-9")(w, n)
			},
			wantStderr: "gltoken: no credential for https://gitlab.example.com/platform/lib.git: too many requests (request id r-9); the daemon is rate limiting: retry in 30s\n",
			wantCalls:  1, // longer than the helper waits: no retry
		},
		{
			name:       "bad git input",
			env:        map[string]string{"GLTOKEN_ID_TOKEN": testIDToken},
			stdin:      "protocol=https\nnot a key value line\n",
			wantStderr: "gltoken: cannot read git's request: line 2: malformed credential line: no '='; this git speaks a credential protocol gltoken does not understand\n",
		},
		{
			name:       "bad scope",
			args:       []string{"--scope", "read_repository;rm"},
			env:        map[string]string{"GLTOKEN_ID_TOKEN": testIDToken},
			stdin:      getInput,
			wantStderr: "gltoken: bad --scope or GLTOKEN_SCOPE: scope \"read_repository;rm\" is not a GitLab scope name; give GitLab scope names separated by commas, e.g. read_repository,write_repository\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fd := &fakeDaemon{answer: tt.answer}
			if fd.answer == nil {
				fd.answer = func(http.ResponseWriter, int) { t.Error("the daemon was called") }
			}
			env := map[string]string{"GLTOKEN_DAEMON": unixDaemon(t, fd)}
			for k, v := range tt.env {
				env[k] = v
			}
			args := append(append([]string{"git-credential-gltoken"}, tt.args...), "get")
			r := runWith(t, args, env, tt.stdin)
			if r.code != 1 {
				t.Errorf("code = %d, want 1", r.code)
			}
			if r.stdout != "" {
				t.Errorf("stdout = %q, want nothing", r.stdout)
			}
			if r.stderr != tt.wantStderr {
				t.Errorf("stderr = %q\nwant     %q", r.stderr, tt.wantStderr)
			}
			if strings.Contains(r.stderr, testIDToken) || strings.Contains(r.stderr, testSecret) || strings.Contains(r.stderr, "gldt-a") {
				t.Errorf("stderr contains a secret: %q", r.stderr)
			}
			if got := len(fd.Calls()); got != tt.wantCalls {
				t.Errorf("daemon calls = %d, want %d", got, tt.wantCalls)
			}
		})
	}
}

// TestRetryRateLimited: a 429 is asked again after Retry-After (plus jitter), at most twice.
func TestRetryRateLimited(t *testing.T) {
	limited := func(w http.ResponseWriter, n int) {
		w.Header().Set("Retry-After", "1")
		deny(429, "slow_down", "too many requests", fmt.Sprint("r-", n))(w, n)
	}
	fd := &fakeDaemon{answer: func(w http.ResponseWriter, n int) {
		if n == 1 {
			limited(w, n)
			return
		}
		grant(3599, testSecret)(w, n)
	}}
	env := map[string]string{"GLTOKEN_DAEMON": unixDaemon(t, fd), "GLTOKEN_ID_TOKEN": testIDToken}
	start := time.Now()
	r := runWith(t, []string{"git-credential-gltoken", "get"}, env, getInput)
	if r.code != 0 || r.stderr != "" || len(fd.Calls()) != 2 {
		t.Fatalf("one 429 then a grant: %+v, %d calls", r, len(fd.Calls()))
	}
	if waited := time.Since(start); waited < time.Second {
		t.Fatalf("retried after %s, before Retry-After", waited)
	}

	fd2 := &fakeDaemon{answer: limited}
	env["GLTOKEN_DAEMON"] = unixDaemon(t, fd2)
	r = runWith(t, []string{"git-credential-gltoken", "get"}, env, getInput)
	if r.code != 1 || len(fd2.Calls()) != 3 || r.stderr != "gltoken: no credential for https://gitlab.example.com/platform/lib.git: too many requests (request id r-3); the daemon is rate limiting: retry in 1s\n" {
		t.Fatalf("always 429: %+v, %d calls (want 3: the first and two retries)", r, len(fd2.Calls()))
	}
}

func TestPlainHTTPToNonLoopbackRefused(t *testing.T) {
	for _, daemon := range []string{"http://gltoken.example.com:8638", "http://192.0.2.10"} {
		t.Run(daemon, func(t *testing.T) {
			r := runWith(t, []string{"git-credential-gltoken", "--daemon", daemon, "get"}, map[string]string{"GLTOKEN_ID_TOKEN": testIDToken}, getInput)
			want := "gltoken: no credential for https://gitlab.example.com/platform/lib.git: daemon \"" + daemon + "\": plain http is allowed only to a loopback daemon (127.0.0.1, [::1], localhost); use https:// or unix://; fix --daemon or GLTOKEN_DAEMON\n"
			if r.code != 1 || r.stdout != "" || r.stderr != want {
				t.Fatalf("code %d, stdout %q, stderr %q\nwant stderr %q", r.code, r.stdout, r.stderr, want)
			}
		})
	}
}

func TestDaemonUnreachable(t *testing.T) {
	dir, _ := os.MkdirTemp("", "gcg")
	t.Cleanup(func() { os.RemoveAll(dir) })
	daemon := "unix://" + filepath.Join(dir, "missing.sock")
	r := runWith(t, []string{"git-credential-gltoken", "get"}, map[string]string{"GLTOKEN_DAEMON": daemon, "GLTOKEN_ID_TOKEN": testIDToken}, getInput)
	if r.code != 1 || r.stdout != "" || strings.Count(r.stderr, "\n") != 1 {
		t.Fatalf("code %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	for _, want := range []string{"gltoken: no credential for https://gitlab.example.com/platform/lib.git: cannot reach the gltoken daemon at " + daemon, "check that exchanged is running"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("stderr %q lacks %q", r.stderr, want)
		}
	}
}

func TestErase(t *testing.T) {
	fd := &fakeDaemon{answer: func(http.ResponseWriter, int) { t.Error("token endpoint called on erase") }}
	daemon := unixDaemon(t, fd)
	r := runWith(t, []string{"git-credential-gltoken", "erase"}, map[string]string{"GLTOKEN_DAEMON": daemon},
		"protocol=https\nhost=gitlab.example.com\npath=platform/lib.git\nusername=gitlab+deploy-token-42\npassword="+testSecret+"\n\n")
	if r.code != 0 || r.stdout != "" || r.stderr != "" {
		t.Fatalf("erase: %+v", r)
	}
	calls := fd.Calls()
	if len(calls) != 1 || calls[0].path != "/v1/revoke" || fmt.Sprint(calls[0].form) != fmt.Sprint(url.Values{"token": {testSecret}}) {
		t.Fatalf("calls = %+v, want one revoke of exactly the rejected token", calls)
	}

	// A credential another helper gave (a person's own token) is left alone.
	for _, user := range []string{"alice", "oauth2", "gitlab-ci-token", "", "gitlab+deploy-token-42x"} {
		r = runWith(t, []string{"git-credential-gltoken", "erase"}, map[string]string{"GLTOKEN_DAEMON": daemon},
			"protocol=https\nhost=gitlab.example.com\nusername="+user+"\npassword=glpat-personal\n\n")
		if r.code != 0 || r.stdout != "" || r.stderr != "" || len(fd.Calls()) != 1 {
			t.Fatalf("erase of %q's credential: %+v, calls %d", user, r, len(fd.Calls()))
		}
	}

	// Without a password there is nothing to revoke.
	r = runWith(t, []string{"git-credential-gltoken", "erase"}, map[string]string{"GLTOKEN_DAEMON": daemon}, "protocol=https\nhost=gitlab.example.com\n\n")
	if r.code != 0 || r.stdout != "" || r.stderr != "" || len(fd.Calls()) != 1 {
		t.Fatalf("erase without password: %+v, calls %d", r, len(fd.Calls()))
	}
}

func TestEraseFailure(t *testing.T) {
	dir, _ := os.MkdirTemp("", "gcg")
	t.Cleanup(func() { os.RemoveAll(dir) })
	r := runWith(t, []string{"git-credential-gltoken", "erase"}, map[string]string{"GLTOKEN_DAEMON": "unix://" + filepath.Join(dir, "none.sock")},
		"protocol=https\nhost=h\nusername=gitlab+deploy-token-42\npassword="+testSecret+"\n")
	if r.code != 1 || r.stdout != "" || strings.Count(r.stderr, "\n") != 1 || strings.Contains(r.stderr, testSecret) {
		t.Fatalf("erase failure: %+v", r)
	}
	if !strings.HasPrefix(r.stderr, "gltoken: cannot revoke the rejected credential "+fingerprint.Short(testSecret)+": cannot reach the gltoken daemon") {
		t.Fatalf("stderr = %q", r.stderr)
	}
}

func TestStoreAndUnknownOperations(t *testing.T) {
	fd := &fakeDaemon{answer: func(http.ResponseWriter, int) { t.Error("daemon called") }}
	env := map[string]string{"GLTOKEN_DAEMON": unixDaemon(t, fd), "GLTOKEN_ID_TOKEN": testIDToken}
	for _, op := range []string{"store", "capability", "frobnicate"} {
		r := runWith(t, []string{"git-credential-gltoken", op}, env, "protocol=https\nhost=h\npath=p\nusername=u\npassword="+testSecret+"\n\n")
		if r.code != 0 || r.stdout != "" || r.stderr != "" {
			t.Errorf("%s: %+v", op, r)
		}
	}
	if n := len(fd.Calls()); n != 0 {
		t.Fatalf("daemon calls = %d", n)
	}
}

func TestGetIgnoresNonHTTPProtocols(t *testing.T) {
	r := runWith(t, []string{"git-credential-gltoken", "get"}, map[string]string{"GLTOKEN_ID_TOKEN": testIDToken}, "protocol=cert\npath=/home/u/cert.p12\n\n")
	if r.code != 0 || r.stdout != "" || r.stderr != "" {
		t.Fatalf("%+v", r)
	}
}

func TestDebugNeverPrintsSecrets(t *testing.T) {
	fd := &fakeDaemon{answer: grant(3599, testSecret)}
	env := map[string]string{"GLTOKEN_DAEMON": unixDaemon(t, fd), "GLTOKEN_ID_TOKEN": testIDToken, "GLTOKEN_DEBUG": "1"}
	r := runWith(t, []string{"git-credential-gltoken", "get"}, env, getInput)
	if r.code != 0 {
		t.Fatalf("%+v", r)
	}
	if strings.Contains(r.stderr, testIDToken) || strings.Contains(r.stderr, testSecret) {
		t.Fatalf("debug output contains a secret: %q", r.stderr)
	}
	for _, want := range []string{fingerprint.Short(testIDToken), fingerprint.Short(testSecret), "resource=https://gitlab.example.com/platform/lib.git"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("debug output lacks %q: %q", want, r.stderr)
		}
	}
	r = runWith(t, []string{"git-credential-gltoken", "erase"}, env, "protocol=https\nhost=h\nusername=project_7_bot_0a1b\npassword="+testSecret+"\n")
	if r.code != 0 || strings.Contains(r.stderr, testSecret) || !strings.Contains(r.stderr, fingerprint.Short(testSecret)) {
		t.Fatalf("erase debug: %+v", r)
	}
}

func TestHelpAndVersion(t *testing.T) {
	r := runWith(t, []string{"git-credential-gltoken", "--help"}, nil, "")
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("%+v", r)
	}
	for _, section := range []string{"NAME\n", "SYNOPSIS\n", "DESCRIPTION\n", "OPTIONS\n", "ENVIRONMENT\n", "GIT CONFIGURATION\n", "EXAMPLES\n", "EXIT STATUS\n", "credential.https://gitlab.example.com.useHttpPath true"} {
		if !strings.Contains(r.stdout, section) {
			t.Errorf("--help lacks %q", section)
		}
	}
	for _, args := range [][]string{{"--version"}, {"version"}} {
		r = runWith(t, append([]string{"/usr/bin/git-credential-gltoken"}, args...), nil, "")
		if r.code != 0 || r.stdout != "git-credential-gltoken dev\n" || r.stderr != "" {
			t.Errorf("%v: %+v", args, r)
		}
	}
	r = runWith(t, []string{"git-credential-gltoken", "--bogus", "get"}, nil, "")
	if r.code != 2 || r.stdout != "" || r.stderr != "gltoken: unknown flag: --bogus; see git-credential-gltoken --help\n" {
		t.Errorf("bad flag: %+v", r)
	}
	r = runWith(t, []string{"git-credential-gltoken"}, nil, "")
	if r.code != 2 || r.stdout != "" || strings.Count(r.stderr, "\n") != 1 {
		t.Errorf("no operation: %+v", r)
	}
}

func TestDocker(t *testing.T) {
	fd := &fakeDaemon{answer: grant(3599, testSecret)}
	daemon := unixDaemon(t, fd)
	argv0 := "/usr/local/bin/docker-credential-gltoken"
	env := map[string]string{"GLTOKEN_DAEMON": daemon, "GLTOKEN_ID_TOKEN": testIDToken, "CI_PROJECT_PATH": "platform/app"}

	r := runWith(t, []string{argv0, "get"}, env, "registry.example.com:5050\n")
	if r.code != 0 || r.stderr != "" || r.stdout != `{"ServerURL":"registry.example.com:5050","Username":"gitlab+deploy-token-42","Secret":"`+testSecret+`"}`+"\n" {
		t.Fatalf("get: %+v", r)
	}
	if got, want := fmt.Sprint(fd.Calls()[0].form), fmt.Sprint(wantForm("https://registry.example.com:5050/platform/app", "read_registry")); got != want {
		t.Fatalf("form = %s, want %s", got, want)
	}

	env2 := map[string]string{"GLTOKEN_DAEMON": daemon, "GLTOKEN_ID_TOKEN": testIDToken, "CI_PROJECT_PATH": "platform/app", "GLTOKEN_REGISTRY_PROJECT": "platform/images", "GLTOKEN_SCOPE": "write_registry"}
	r = runWith(t, []string{argv0, "get"}, env2, "https://registry.example.com")
	if r.code != 0 {
		t.Fatalf("get with write: %+v", r)
	}
	if got, want := fmt.Sprint(fd.Calls()[1].form), fmt.Sprint(wantForm("https://registry.example.com/platform/images", "read_registry write_registry")); got != want {
		t.Fatalf("form = %s, want %s", got, want)
	}

	for _, tc := range []struct {
		action, stdin, stdout, stderr string
		code                          int
	}{
		{"list", "", "{}\n", "", 0},
		{"version", "", "docker-credential-gltoken (gltoken.dev/gltoken) dev\n", "", 0},
		{"store", `{"ServerURL":"registry.example.com","Username":"u","Secret":"s"}`, "", "", 0},
		{"store", `{"ServerURL":"registry.example.com"}`, "no credentials username\n", "", 1},
		{"erase", "registry.example.com\n", "", "gltoken: erase registry.example.com: nothing stored, nothing revoked; registry credentials from gltoken expire on their own\n", 0},
		{"frob", "", "Unknown credential action `frob`\n", "", 1},
	} {
		r = runWith(t, []string{argv0, tc.action}, env, tc.stdin)
		if r.code != tc.code || r.stdout != tc.stdout || r.stderr != tc.stderr {
			t.Errorf("%s: %+v, want %d %q %q", tc.action, r, tc.code, tc.stdout, tc.stderr)
		}
	}
	if n := len(fd.Calls()); n != 2 {
		t.Fatalf("daemon calls = %d, want 2", n)
	}
}

// TestDockerSeveralProjects: GLTOKEN_REGISTRY_PROJECTS asks the daemon for
// one credential valid at the registry repositories of every project named,
// one resource parameter each; a project named twice is asked for once.
func TestDockerSeveralProjects(t *testing.T) {
	fd := &fakeDaemon{answer: grant(3599, testSecret)}
	env := map[string]string{"GLTOKEN_DAEMON": unixDaemon(t, fd), "GLTOKEN_ID_TOKEN": testIDToken, "CI_PROJECT_PATH": "platform/app",
		"GLTOKEN_REGISTRY_PROJECTS": "platform/tools/cli, platform/tools/lint,platform/tools/cli"}
	r := runWith(t, []string{"docker-credential-gltoken", "get"}, env, "registry.example.com\n")
	if r.code != 0 || r.stderr != "" || !strings.Contains(r.stdout, `"Secret":"`+testSecret+`"`) {
		t.Fatalf("get: %+v", r)
	}
	want := wantForm("https://registry.example.com/platform/tools/cli", "read_registry")
	want["resource"] = append(want["resource"], "https://registry.example.com/platform/tools/lint")
	if got := fd.Calls()[0].form; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("form = %s, want %s", got, want)
	}
}

func TestDockerHelp(t *testing.T) {
	r := runWith(t, []string{"docker-credential-gltoken", "--help"}, nil, "")
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("%+v", r)
	}
	for _, want := range []string{"GLTOKEN_REGISTRY_PROJECTS", "never the image", "allow.groups", "username oauth2", "EXIT STATUS\n"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("--help lacks %q", want)
		}
	}
}

func manyProjects(n int) string {
	var b strings.Builder
	for i := range n {
		fmt.Fprintf(&b, "platform/p%d,", i)
	}
	return b.String()
}

func TestDockerNotFoundAndErrors(t *testing.T) {
	argv0 := "docker-credential-gltoken"
	tests := []struct {
		name       string
		env        map[string]string
		answer     func(http.ResponseWriter, int)
		wantStdout string
		wantStderr string
	}{
		{
			name:       "no ID token",
			env:        map[string]string{"CI_PROJECT_PATH": "platform/app", "GITLAB_CI": "true"},
			wantStdout: "credentials not found in native keychain\n",
			wantStderr: "gltoken: no ID token: GLTOKEN_ID_TOKEN is not set; declare it in the CI job with the id_tokens: keyword (id_tokens: {GLTOKEN_ID_TOKEN: {aud: <the daemon's audience>}}) or point --id-token-file (GLTOKEN_ID_TOKEN_FILE) at a file holding it\n",
		},
		{
			name:       "no project",
			env:        map[string]string{"GLTOKEN_ID_TOKEN": testIDToken},
			wantStdout: "credentials not found in native keychain\n",
			wantStderr: "gltoken: no registry project for registry.example.com: set GLTOKEN_REGISTRY_PROJECT to the project path, or GLTOKEN_REGISTRY_PROJECTS to several (in a CI job CI_PROJECT_PATH is used)\n",
		},
		{
			name:       "policy does not cover it",
			env:        map[string]string{"GLTOKEN_ID_TOKEN": testIDToken, "CI_PROJECT_PATH": "platform/app"},
			answer:     deny(400, "invalid_target", "registry.example.com/platform/app is not allowed", "r-1"),
			wantStdout: "credentials not found in native keychain\n",
			wantStderr: "gltoken: registry login denied, going on anonymously: https://registry.example.com/platform/app: registry.example.com/platform/app is not allowed (request id r-1); the trust policy does not grant this job that resource: ask the gltoken administrator for a rule (exchanged explain shows which check failed)\n",
		},
		{
			name:       "several projects denied",
			env:        map[string]string{"GLTOKEN_ID_TOKEN": testIDToken, "GLTOKEN_REGISTRY_PROJECTS": "platform/a,other/b"},
			answer:     deny(400, "invalid_target", "one credential cannot serve both platform/a and other/b", "r-3"),
			wantStdout: "credentials not found in native keychain\n",
			wantStderr: "gltoken: registry login denied, going on anonymously: https://registry.example.com (platform/a, other/b): one credential cannot serve both platform/a and other/b (request id r-3); the trust policy does not grant this job that resource: ask the gltoken administrator for a rule (exchanged explain shows which check failed)\n",
		},
		{
			name:       "both variables",
			env:        map[string]string{"GLTOKEN_ID_TOKEN": testIDToken, "GLTOKEN_REGISTRY_PROJECTS": "platform/a,platform/b", "GLTOKEN_REGISTRY_PROJECT": "platform/a"},
			wantStdout: "gltoken: no credential for registry.example.com: GLTOKEN_REGISTRY_PROJECT and GLTOKEN_REGISTRY_PROJECTS are both set: set one of them\n",
		},
		{
			name:       "an image path",
			env:        map[string]string{"GLTOKEN_ID_TOKEN": testIDToken, "GLTOKEN_REGISTRY_PROJECTS": "platform/a, https://registry.example.com/platform/b"},
			wantStdout: "gltoken: no credential for registry.example.com: bad registry project \"https://registry.example.com/platform/b\": path segment \"https:\" is not a valid GitLab path; name project paths (group/project), not image paths or URLs\n",
		},
		{
			name:       "too many",
			env:        map[string]string{"GLTOKEN_ID_TOKEN": testIDToken, "GLTOKEN_REGISTRY_PROJECTS": manyProjects(21)},
			wantStdout: "gltoken: no credential for registry.example.com: GLTOKEN_REGISTRY_PROJECTS names 21 projects; at most 20\n",
		},
		{
			name:       "other error on stdout",
			env:        map[string]string{"GLTOKEN_ID_TOKEN": testIDToken, "CI_PROJECT_PATH": "platform/app"},
			answer:     deny(503, "temporarily_unavailable", "GitLab did not answer", "r-2"),
			wantStdout: "gltoken: no credential for https://registry.example.com/platform/app: GitLab did not answer (request id r-2); the daemon cannot reach GitLab right now: retry later\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fd := &fakeDaemon{answer: tt.answer}
			if fd.answer == nil {
				fd.answer = func(http.ResponseWriter, int) { t.Error("daemon called") }
			}
			tt.env["GLTOKEN_DAEMON"] = unixDaemon(t, fd)
			r := runWith(t, []string{argv0, "get"}, tt.env, "registry.example.com")
			if r.code != 1 || r.stdout != tt.wantStdout || r.stderr != tt.wantStderr {
				t.Fatalf("got %d %q %q\nwant 1 %q %q", r.code, r.stdout, r.stderr, tt.wantStdout, tt.wantStderr)
			}
		})
	}
}

func TestConfigure(t *testing.T) {
	if _, err := exec.LookPath("git"); err != nil {
		t.Fatalf("configure drives the real git, which is not installed: %v", err)
	}
	home := t.TempDir()
	global := filepath.Join(home, ".gitconfig")
	t.Setenv("HOME", home)
	t.Setenv("GIT_CONFIG_GLOBAL", global)
	t.Setenv("GIT_CONFIG_NOSYSTEM", "1")
	gitConfig := func() string {
		out, _ := exec.Command("git", "config", "--global", "--get-regexp", `^credential\.`).Output()
		return string(out)
	}
	ci := map[string]string{"GITLAB_CI": "true"}

	// In a CI job: both lines, global without asking.
	r := runWith(t, []string{"git-credential-gltoken", "configure", "--host", "https://GitLab.example.com/"}, ci, "")
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("configure: %+v", r)
	}
	wantOut := "git config --global credential.https://gitlab.example.com.helper gltoken\ngit config --global credential.https://gitlab.example.com.useHttpPath true\n"
	if r.stdout != wantOut {
		t.Fatalf("stdout = %q, want %q", r.stdout, wantOut)
	}
	if got, want := gitConfig(), "credential.https://gitlab.example.com.helper gltoken\ncredential.https://gitlab.example.com.usehttppath true\n"; got != want {
		t.Fatalf("git config = %q, want %q", got, want)
	}

	// CI_SERVER_URL is the default host; --remove takes both lines out.
	r = runWith(t, []string{"git-credential-gltoken", "configure", "--global", "--remove"}, map[string]string{"CI_SERVER_URL": "https://gitlab.example.com"}, "")
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("configure --remove: %+v", r)
	}
	if got := gitConfig(); got != "" {
		t.Fatalf("after --remove: %q", got)
	}
	// Removing again is not an error.
	r = runWith(t, []string{"git-credential-gltoken", "configure", "--global", "--remove", "--host", "gitlab.example.com"}, nil, "")
	if r.code != 0 {
		t.Fatalf("second --remove: %+v", r)
	}

	// A person's machine with credential.helper=store and a stored token for the host: the login
	// path needs no repository path, so configure writes only the helper, the stored entry keeps
	// matching, and configure says which helper answers first.
	if out, err := exec.Command("git", "config", "--global", "credential.helper", "store").CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	if err := os.WriteFile(filepath.Join(home, ".git-credentials"), []byte("https://alice:glpat-personal@gitlab.example.com\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r = runWith(t, []string{"git-credential-gltoken", "configure", "--global", "--host", "https://gitlab.example.com"}, nil, "")
	if r.code != 0 || r.stdout != "git config --global credential.https://gitlab.example.com.helper gltoken\n" ||
		!strings.HasPrefix(r.stderr, "gltoken: note: credential.helper=store is asked before gltoken for https://gitlab.example.com") {
		t.Fatalf("configure beside store: %+v", r)
	}
	fill := exec.Command("git", "credential", "fill")
	fill.Stdin = strings.NewReader("url=https://gitlab.example.com/platform/lib.git\n\n")
	fill.Env = append(os.Environ(), "GIT_TERMINAL_PROMPT=0", "PATH=/nonexistent:"+os.Getenv("PATH"))
	out, err := fill.Output()
	if err != nil || !strings.Contains(string(out), "username=alice\npassword=glpat-personal\n") {
		t.Fatalf("the stored entry no longer matches: %v %q", err, out)
	}
	// The same in a CI job: warned, since useHttpPath would hide the entry.
	r = runWith(t, []string{"git-credential-gltoken", "configure", "--host", "https://gitlab.example.com"}, ci, "")
	if r.code != 0 || !strings.HasPrefix(r.stderr, "gltoken: warning: credential.helper=store also answers for https://gitlab.example.com; with useHttpPath") {
		t.Fatalf("configure beside store in CI: %+v", r)
	}

	r = runWith(t, []string{"git-credential-gltoken", "configure", "--global"}, nil, "")
	if r.code != 1 || r.stderr != "gltoken: configure needs the GitLab URL: pass --host https://gitlab.example.com\n" {
		t.Fatalf("configure without host: %+v", r)
	}
	r = runWith(t, []string{"git-credential-gltoken", "configure", "--host", "https://h/group/project"}, nil, "")
	if r.code != 1 || !strings.Contains(r.stderr, "only scheme://host[:port]") {
		t.Fatalf("configure with a path: %+v", r)
	}
}

// TestMain lets git run this test binary as the helper: linked under the
// helper's name, it is the helper.
func TestMain(m *testing.M) {
	if filepath.Base(os.Args[0]) == "git-credential-gltoken" {
		os.Exit(Run(context.Background(), "dev", os.Args, os.Getenv, os.Stdin, os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// TestRealGit has the installed git call the helper through its own
// credential machinery: the configuration the README shows, `git credential fill`
// and `git credential reject` (what git does on a 401).
func TestRealGit(t *testing.T) {
	if _, err := exec.LookPath("git"); err != nil {
		t.Fatalf("git is not installed: %v", err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := t.TempDir()
	if err := os.Symlink(self, filepath.Join(bin, "git-credential-gltoken")); err != nil {
		t.Fatal(err)
	}
	fd := &fakeDaemon{answer: grant(3599, testSecret)}
	home := t.TempDir()
	gitEnv := append(os.Environ(),
		"PATH="+bin+string(os.PathListSeparator)+os.Getenv("PATH"),
		"HOME="+home, "GIT_CONFIG_GLOBAL="+filepath.Join(home, ".gitconfig"), "GIT_CONFIG_NOSYSTEM=1",
		"GIT_TERMINAL_PROMPT=0", "GLTOKEN_DAEMON="+unixDaemon(t, fd), "GLTOKEN_ID_TOKEN="+testIDToken)
	git := func(stdin string, args ...string) (string, error) {
		cmd := exec.Command("git", append([]string{
			"-c", "credential.https://gitlab.example.com.helper=gltoken",
			"-c", "credential.https://gitlab.example.com.useHttpPath=true"}, args...)...)
		cmd.Env = gitEnv
		cmd.Stdin = strings.NewReader(stdin)
		var out, errOut bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errOut
		err := cmd.Run()
		if err != nil {
			return out.String(), fmt.Errorf("git %v: %w: %s", args, err, errOut.String())
		}
		return out.String(), nil
	}
	out, err := git("url=https://gitlab.example.com/platform/lib.git\n\n", "credential", "fill")
	if err != nil {
		t.Fatal(err)
	}
	// git 2.39 passes password_expiry_utc through or drops it; the rest is exact.
	out = regexp.MustCompile(`password_expiry_utc=\d+\n`).ReplaceAllString(out, "")
	want := "protocol=https\nhost=gitlab.example.com\npath=platform/lib.git\nusername=gitlab+deploy-token-42\npassword=" + testSecret + "\n"
	if out != want {
		t.Fatalf("git credential fill = %q, want %q", out, want)
	}
	if _, err := git("url=https://gitlab.example.com/platform/lib.git\nusername=gitlab+deploy-token-42\npassword="+testSecret+"\n\n", "credential", "reject"); err != nil {
		t.Fatal(err)
	}
	calls := fd.Calls()
	if len(calls) != 2 || calls[1].path != "/v1/revoke" || calls[1].form.Get("token") != testSecret {
		t.Fatalf("calls = %+v, want a token exchange then the revocation of the rejected token", calls)
	}
}

func BenchmarkGet(b *testing.B) {
	fd := &fakeDaemon{answer: grant(3599, testSecret)}
	env := map[string]string{"GLTOKEN_DAEMON": unixDaemon(b, fd), "GLTOKEN_ID_TOKEN": testIDToken}
	getenv := func(k string) string { return env[k] }
	args := []string{"git-credential-gltoken", "get"}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if code := Run(ctx, "dev", args, getenv, strings.NewReader(getInput), io.Discard, io.Discard); code != 0 {
			b.Fatalf("run = %d", code)
		}
	}
}
