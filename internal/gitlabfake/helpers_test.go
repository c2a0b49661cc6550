package gitlabfake

import (
	"crypto/rsa"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	gitlab "gitlab.com/gitlab-org/api/client-go"
)

// fakeClock is an injectable clock.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock(t time.Time) *fakeClock { return &fakeClock{now: t} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = t
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// fixture is a stand-in with a maintainer service account on platform/app.
type fixture struct {
	s       *Server
	clock   *fakeClock
	svc     *User
	svcPAT  string
	project *Project
}

var t0 = time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC)

func newFixture(t *testing.T) *fixture {
	t.Helper()
	clock := newClock(t0)
	s := Start(t, Options{Now: clock.Now})
	svc := s.AddUser("svc-gltoken")
	p := s.AddProject("platform/app")
	s.AddMember(svc, "platform/app", Maintainer)
	pat := s.CreatePersonalAccessToken(svc, "gltoken", []string{"api"}, nil)
	return &fixture{s: s, clock: clock, svc: svc, svcPAT: pat, project: p}
}

func newClient(t *testing.T, s *Server, token string) *gitlab.Client {
	t.Helper()
	c, err := gitlab.NewClient(token, gitlab.WithBaseURL(s.URL()), gitlab.WithoutRetries())
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// apiResult is a raw HTTP answer.
type apiResult struct {
	status int
	header http.Header
	body   []byte
}

func (r apiResult) json(t *testing.T) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(r.body, &m); err != nil {
		t.Fatalf("body %q is not a JSON object: %v", r.body, err)
	}
	return m
}

func doRaw(t *testing.T, method, u, token, contentType, body string) apiResult {
	t.Helper()
	req, err := http.NewRequest(method, u, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("PRIVATE-TOKEN", token)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return apiResult{status: resp.StatusCode, header: resp.Header, body: b}
}

// gitEnvForTest isolates the git client from the machine's configuration.
func gitEnvForTest(t *testing.T) []string {
	home := t.TempDir()
	return append(os.Environ(),
		"HOME="+home,
		"XDG_CONFIG_HOME="+filepath.Join(home, ".config"),
		"GIT_CONFIG_NOSYSTEM=1",
		"GIT_TERMINAL_PROMPT=0",
		"GIT_ASKPASS=",
		"SSH_ASKPASS=",
		"GIT_AUTHOR_NAME=Test", "GIT_AUTHOR_EMAIL=test@example.com",
		"GIT_COMMITTER_NAME=Test", "GIT_COMMITTER_EMAIL=test@example.com",
	)
}

func runGit(t *testing.T, dir string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command("git", args...)
	cmd.Dir = dir
	cmd.Env = gitEnvForTest(t)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// repoURL puts the credentials in the URL (git sends them with Basic auth).
func repoURL(s *Server, user, pass, path string) string {
	u, _ := url.Parse(s.URL())
	if user != "" || pass != "" {
		u.User = url.UserPassword(user, pass)
	}
	u.Path = "/" + path + ".git"
	return u.String()
}

// mustClone clones and fails the test on error.
func mustClone(t *testing.T, s *Server, user, pass, path string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "clone")
	if out, err := runGit(t, "", "clone", "--quiet", repoURL(s, user, pass, path), dir); err != nil {
		t.Fatalf("clone %s as %s: %v\n%s", path, user, err, out)
	}
	return dir
}

func tryClone(t *testing.T, s *Server, user, pass, path string) (string, error) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "clone")
	return runGit(t, "", "clone", "--quiet", repoURL(s, user, pass, path), dir)
}

// commitAndPush makes a commit in a clone and pushes branch to the remote URL.
func commitAndPush(t *testing.T, dir, remote, branch string) (string, error) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, "change-"+branch+".txt"), []byte(time.Now().String()), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := runGit(t, dir, "add", "."); err != nil {
		t.Fatalf("git add: %v %s", err, out)
	}
	if out, err := runGit(t, dir, "commit", "--quiet", "-m", "change"); err != nil {
		t.Fatalf("git commit: %v %s", err, out)
	}
	return runGit(t, dir, "push", "--quiet", remote, "HEAD:refs/heads/"+branch)
}

type rsaPublicKey = rsa.PublicKey

var regexpLibtrust = regexp.MustCompile(`^[A-Z2-7]{4}(:[A-Z2-7]{4}){11}$`)

func jsonDecode(resp *http.Response, v any) error {
	return json.NewDecoder(resp.Body).Decode(v)
}
