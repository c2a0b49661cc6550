package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"gltoken.dev/gltoken/internal/gitlaboauth"
)

// TestMain doubles as a client of the agent run under another uid (see TestOtherUIDRefused).
func TestMain(m *testing.M) {
	if sock := os.Getenv("GLTOKEN_TEST_DIAL"); sock != "" {
		_, err := NewClient(sock).Status(context.Background())
		if err != nil {
			fmt.Println("refused:", err)
			os.Exit(3)
		}
		fmt.Println("served")
		os.Exit(0)
	}
	os.Exit(m.Run())
}

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// fakeOauth rotates refresh tokens as GitLab does: each works once.
type fakeOauth struct {
	mu        sync.Mutex
	now       func() time.Time
	valid     map[string]bool
	refreshes int
	revoked   []string
	fail      error
	delay     time.Duration
}

func (f *fakeOauth) Refresh(_ context.Context, g gitlaboauth.Grant) (gitlaboauth.Grant, error) {
	time.Sleep(f.delay)
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil {
		return gitlaboauth.Grant{}, f.fail
	}
	if !f.valid[g.RefreshToken] {
		return gitlaboauth.Grant{}, fmt.Errorf("%w (invalid_grant)", gitlaboauth.ErrLoginNeeded)
	}
	delete(f.valid, g.RefreshToken)
	f.refreshes++
	n := fmt.Sprint(f.refreshes)
	f.valid["rt-"+n] = true
	now := f.now()
	g.AccessToken, g.RefreshToken, g.ObtainedAt, g.ExpiresAt = "at-"+n, "rt-"+n, now, now.Add(2*time.Hour)
	return g, nil
}

func (f *fakeOauth) Revoke(_ context.Context, g gitlaboauth.Grant) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.valid, g.RefreshToken)
	f.revoked = append(f.revoked, g.RefreshToken)
	return nil
}

const host = "https://gitlab.example.com"

func serve(t *testing.T, opts Options) (*Server, *Client) {
	t.Helper()
	dir, err := os.MkdirTemp("", "gla")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	_ = os.Chmod(dir, 0o700)
	sock := filepath.Join(dir, "a", "agent.sock")
	srv, err := NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	l, err := Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Shutdown(context.Background()) })
	return srv, NewClient(sock)
}

func grant(now time.Time) gitlaboauth.Grant {
	return gitlaboauth.Grant{Host: host, ClientID: "cid", Scopes: []string{"read_repository"}, AccessToken: "at-0", RefreshToken: "rt-0",
		ObtainedAt: now, ExpiresAt: now.Add(2 * time.Hour)}
}

func TestHalfLifeRefreshSingleFlight(t *testing.T) {
	c := &clock{t: time.Date(2026, 12, 2, 8, 0, 0, 0, time.UTC)}
	fo := &fakeOauth{now: c.Now, valid: map[string]bool{"rt-0": true}, delay: 50 * time.Millisecond}
	_, cl := serve(t, Options{Oauth: func(string, string) Oauth { return fo }, Now: c.Now})
	ctx := context.Background()
	if _, err := cl.Put(ctx, grant(c.Now()), false); err != nil {
		t.Fatal(err)
	}
	c.Add(59 * time.Minute)
	tok, err := cl.Token(ctx, host)
	if err != nil || tok.AccessToken != "at-0" || fo.refreshes != 0 {
		t.Fatalf("before half-life: %+v %v, %d refreshes", tok, err, fo.refreshes)
	}
	c.Add(time.Minute) // half-life
	var wg sync.WaitGroup
	got := make([]string, 30)
	for i := range got {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tok, err := cl.Token(ctx, host)
			if err != nil {
				t.Error(err)
			}
			got[i] = tok.AccessToken
		}()
	}
	wg.Wait()
	for _, a := range got {
		if a != "at-1" {
			t.Fatalf("tokens handed out: %v", got)
		}
	}
	if fo.refreshes != 1 {
		t.Fatalf("refreshes = %d, want 1", fo.refreshes)
	}

	// A rejected token is refreshed before it is handed out again.
	if err := cl.Reject(ctx, host, "at-1"); err != nil {
		t.Fatal(err)
	}
	if tok, _ := cl.Token(ctx, host); tok.AccessToken != "at-2" {
		t.Fatalf("after reject: %+v", tok)
	}

	// GitLab refusing the refresh token drops the grant: login needed.
	fo.mu.Lock()
	fo.valid = map[string]bool{}
	fo.mu.Unlock()
	c.Add(90 * time.Minute)
	_, err = cl.Token(ctx, host)
	var ae *Error
	if !errors.As(err, &ae) || ae.Code != CodeLoginNeeded {
		t.Fatalf("refused refresh: %v", err)
	}
	if _, err := cl.Token(ctx, host); !errors.As(err, &ae) || ae.Code != CodeNotLoggedIn {
		t.Fatalf("after the drop: %v", err)
	}
}

func TestTransientRefreshFailureServesWhileValid(t *testing.T) {
	c := &clock{t: time.Date(2026, 12, 2, 8, 0, 0, 0, time.UTC)}
	fo := &fakeOauth{now: c.Now, valid: map[string]bool{"rt-0": true}, fail: errors.New("connection refused")}
	_, cl := serve(t, Options{Oauth: func(string, string) Oauth { return fo }, Now: c.Now})
	ctx := context.Background()
	if _, err := cl.Put(ctx, grant(c.Now()), false); err != nil {
		t.Fatal(err)
	}
	c.Add(90 * time.Minute)
	if tok, err := cl.Token(ctx, host); err != nil || tok.AccessToken != "at-0" {
		t.Fatalf("GitLab down, token still good: %+v %v", tok, err)
	}
	c.Add(30*time.Minute - 30*time.Second)
	_, err := cl.Token(ctx, host)
	var ae *Error
	if !errors.As(err, &ae) || ae.Code != CodeUnavailable {
		t.Fatalf("GitLab down, token nearly expired: %v", err)
	}
}

func TestRememberedGrantsFile(t *testing.T) {
	c := &clock{t: time.Date(2026, 12, 2, 8, 0, 0, 0, time.UTC)}
	fo := &fakeOauth{now: c.Now, valid: map[string]bool{"rt-0": true}}
	file := filepath.Join(t.TempDir(), "state", "gltoken", "grants.json")
	opts := Options{Oauth: func(string, string) Oauth { return fo }, Now: c.Now, Keeper: FileKeeper{Path: file}}
	srv, cl := serve(t, opts)
	ctx := context.Background()
	// Not remembered: nothing on disk.
	if _, err := cl.Put(ctx, grant(c.Now()), false); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(file); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a grant not remembered was written: %v", err)
	}
	st, err := cl.Put(ctx, grant(c.Now()), true)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(st.Hosts[0].Kept, file) {
		t.Fatalf("kept = %q", st.Hosts[0].Kept)
	}
	fi, err := os.Stat(file)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("grants file: %v %v", fi, err)
	}
	// A refresh rotates the refresh token: the file follows.
	c.Add(61 * time.Minute)
	if _, err := cl.Token(ctx, host); err != nil {
		t.Fatal(err)
	}
	_ = srv.Shutdown(ctx)
	srv2, err := NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	if st := srv2.status(); len(st.Hosts) != 1 || st.Hosts[0].Host != host {
		t.Fatalf("reloaded: %+v", st)
	}
	if e := srv2.entry(host); e.grant.RefreshToken != "rt-1" {
		t.Fatalf("reloaded refresh token %q, want the rotated one", e.grant.RefreshToken)
	}
	// A file open to others is refused.
	if err := os.Chmod(file, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := NewServer(opts); err == nil || !strings.Contains(err.Error(), "readable by others") {
		t.Fatalf("open grants file: %v", err)
	}
}

func TestLogoutRevokesAndForgets(t *testing.T) {
	c := &clock{t: time.Now()}
	fo := &fakeOauth{now: c.Now, valid: map[string]bool{"rt-0": true}}
	srv, cl := serve(t, Options{Oauth: func(string, string) Oauth { return fo }, Now: c.Now, ExitWhenEmpty: true})
	ctx := context.Background()
	if _, err := cl.Put(ctx, grant(c.Now()), false); err != nil {
		t.Fatal(err)
	}
	if err := cl.Logout(ctx, host); err != nil {
		t.Fatal(err)
	}
	if len(fo.revoked) != 1 || fo.revoked[0] != "rt-0" {
		t.Fatalf("revoked %v", fo.revoked)
	}
	_ = srv
	// ExitWhenEmpty: the agent stops once its last grant is gone.
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err := cl.Status(ctx)
		if errors.Is(err, ErrNotRunning) || (err != nil && strings.Contains(err.Error(), "closed")) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the agent did not stop: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestPeerCheck: a connection from another uid is refused. The agent is told that its own
// uid is another, so the check is proven without a second user.
func TestPeerCheck(t *testing.T) {
	srv, cl := serve(t, Options{Oauth: func(string, string) Oauth { return &fakeOauth{} }})
	if _, err := cl.Status(context.Background()); err != nil {
		t.Fatalf("own uid: %v", err)
	}
	srv2, err := NewServer(Options{Oauth: func(string, string) Oauth { return &fakeOauth{} }})
	if err != nil {
		t.Fatal(err)
	}
	srv2.uid = os.Getuid() + 1
	dir, _ := os.MkdirTemp("", "gla")
	t.Cleanup(func() { os.RemoveAll(dir) })
	_ = os.Chmod(dir, 0o700)
	l, err := Listen(filepath.Join(dir, "s"))
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv2.Serve(l) }()
	t.Cleanup(func() { _ = srv2.Shutdown(context.Background()) })
	if _, err := NewClient(filepath.Join(dir, "s")).Status(context.Background()); err == nil {
		t.Fatal("a peer of another uid was served")
	}
	_ = srv
}

// TestOtherUIDRefused runs a real client as another user (nobody) against an agent whose
// socket that user can reach: SO_PEERCRED refuses it. Needs root to switch users.
func TestOtherUIDRefused(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to run a client as another uid; TestPeerCheck proves the check")
	}
	dir, err := os.MkdirTemp("", "gla")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	// The test binary, where nobody may run it.
	self, _ := os.Executable()
	bin := filepath.Join(dir, "agent.test")
	copyFile(t, self, bin)
	srv, err := NewServer(Options{Oauth: func(string, string) Oauth { return &fakeOauth{} }})
	if err != nil {
		t.Fatal(err)
	}
	// Not Listen: its 0700 directory would stop nobody before the peer check does.
	sockDir := filepath.Join(dir, "open")
	if err := os.Mkdir(sockDir, 0o755); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(sockDir, "agent.sock")
	l, err := listenOpen(sock)
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Shutdown(context.Background()) })

	run := func(uid uint32) (string, error) {
		cmd := exec.Command(bin)
		cmd.Env = []string{"GLTOKEN_TEST_DIAL=" + sock}
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := run(0); err != nil || !strings.Contains(out, "served") {
		t.Fatalf("root client: %v %s", err, out)
	}
	out, err := run(65534)
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 3 || !strings.Contains(out, "refused") {
		t.Fatalf("client as uid 65534: %v %s", err, out)
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	in, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestListenRefusesAnOpenDirectory(t *testing.T) {
	dir, _ := os.MkdirTemp("", "gla")
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(filepath.Join(dir, "agent.sock")); err == nil || !strings.Contains(err.Error(), "open to others") {
		t.Fatalf("Listen in a 0755 directory: %v", err)
	}
}

// listenOpen listens on a socket anyone may connect to.
func listenOpen(sock string) (net.Listener, error) {
	l, err := net.Listen("unix", sock)
	if err != nil {
		return nil, err
	}
	return l, os.Chmod(sock, 0o777)
}
