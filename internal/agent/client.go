package agent

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"gltoken.dev/gltoken/internal/gitlaboauth"
)

// ErrNotRunning: no agent answers on the socket.
var ErrNotRunning = errors.New("the gltoken agent is not running")

// Error is the agent's refusal.
type Error struct {
	Status      int
	Code        string
	Description string
}

func (e *Error) Error() string {
	if e.Description != "" {
		return e.Description
	}
	return e.Code
}

// SocketPath is where the agent listens: $GLTOKEN_AGENT_SOCKET, else
// $XDG_RUNTIME_DIR/gltoken/agent.sock, else /tmp/gltoken-UID/agent.sock.
func SocketPath(getenv func(string) string) string {
	if p := getenv("GLTOKEN_AGENT_SOCKET"); p != "" {
		return p
	}
	if d := getenv("XDG_RUNTIME_DIR"); d != "" {
		return filepath.Join(d, "gltoken", "agent.sock")
	}
	return filepath.Join(os.TempDir(), "gltoken-"+strconv.Itoa(os.Getuid()), "agent.sock")
}

// GrantsFile is where remembered grants are kept: $XDG_STATE_HOME/gltoken/grants.json, else
// ~/.local/state/gltoken/grants.json; "" without either variable.
func GrantsFile(getenv func(string) string) string {
	if d := getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "gltoken", "grants.json")
	}
	if h := getenv("HOME"); h != "" {
		return filepath.Join(h, ".local", "state", "gltoken", "grants.json")
	}
	return ""
}

// Listen makes the socket's directory (0700, owned by the caller: refused otherwise) and
// listens on the socket. A stale socket (no agent answers) is replaced.
func Listen(socket string) (net.Listener, error) {
	dir := filepath.Dir(socket)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("make the agent's directory: %w", err)
	}
	if err := checkPrivateDir(dir); err != nil {
		return nil, err
	}
	if c, err := net.DialTimeout("unix", socket, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("an agent already listens on %s", socket)
	}
	_ = os.Remove(socket)
	l, err := net.Listen("unix", socket)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", socket, err)
	}
	if err := os.Chmod(socket, 0o600); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

func checkPrivateDir(dir string) error {
	fi, err := os.Lstat(dir)
	if err != nil {
		return err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !fi.IsDir() || !ok {
		return fmt.Errorf("%s is not a directory", dir)
	}
	if int(st.Uid) != os.Getuid() {
		return fmt.Errorf("%s belongs to uid %d, not to you (uid %d): refusing to put the agent's socket there", dir, st.Uid, os.Getuid())
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return fmt.Errorf("%s is open to others (mode %v): chmod 700 it", dir, fi.Mode().Perm())
	}
	return nil
}

// Client talks to the agent.
type Client struct {
	Socket string
	hc     *http.Client
}

// NewClient returns a client of the agent on socket. It does not connect yet.
func NewClient(socket string) *Client {
	return &Client{Socket: socket, hc: &http.Client{
		Timeout: 60 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		}},
	}}
}

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://gltoken-agent"+path, body)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.hc.Do(req)
	if err != nil {
		if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
			return ErrNotRunning
		}
		return fmt.Errorf("the gltoken agent at %s: %w", c.Socket, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("the gltoken agent at %s: %w", c.Socket, err)
	}
	if resp.StatusCode != http.StatusOK {
		var ea errorAnswer
		_ = json.Unmarshal(b, &ea)
		return &Error{Status: resp.StatusCode, Code: ea.Error, Description: ea.Description}
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("the gltoken agent at %s answered something else than its API", c.Socket)
	}
	return nil
}

// Put hands a new grant to the agent; remember keeps it across reboots (if the agent has a keeper).
func (c *Client) Put(ctx context.Context, g gitlaboauth.Grant, remember bool) (StatusAnswer, error) {
	var st StatusAnswer
	err := c.do(ctx, http.MethodPost, "/v1/grant", putRequest{Grant: g, Remember: remember}, &st)
	return st, err
}

// Token returns an access token for host with at least the agent's margin of life.
func (c *Client) Token(ctx context.Context, host string) (TokenAnswer, error) {
	var t TokenAnswer
	err := c.do(ctx, http.MethodPost, "/v1/token", hostRequest{Host: host}, &t)
	return t, err
}

// Reject tells the agent git was refused with accessToken: the next Token refreshes first.
func (c *Client) Reject(ctx context.Context, host, accessToken string) error {
	return c.do(ctx, http.MethodPost, "/v1/reject", hostRequest{Host: host, AccessToken: accessToken}, nil)
}

// Logout revokes host's grant at GitLab and forgets it.
func (c *Client) Logout(ctx context.Context, host string) error {
	return c.do(ctx, http.MethodPost, "/v1/logout", hostRequest{Host: host}, nil)
}

// Status describes the grants, never a secret.
func (c *Client) Status(ctx context.Context) (StatusAnswer, error) {
	var st StatusAnswer
	err := c.do(ctx, http.MethodGet, "/v1/status", nil, &st)
	return st, err
}

// Start launches an agent in the background: exe with args (e.g. the helper binary and
// "agent"), detached in its own session, its standard error appended to logFile. It returns
// once the agent says it listens ("ok" on its standard output), as git's credential-cache does.
func Start(ctx context.Context, argv0, exe string, args []string, env []string, logFile string) error {
	logf, err := os.OpenFile(logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("open the agent's log: %w", err)
	}
	defer logf.Close()
	cmd := &exec.Cmd{Path: exe, Args: append([]string{argv0}, args...), Env: env, Stderr: logf,
		SysProcAttr: &syscall.SysProcAttr{Setsid: true}}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start the gltoken agent: %w", err)
	}
	ready := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(out).ReadString('\n')
		ready <- strings.TrimSpace(line)
	}()
	select {
	case line := <-ready:
		if line != "ok" {
			_ = cmd.Wait()
			return fmt.Errorf("the gltoken agent did not start; see %s", logFile)
		}
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return fmt.Errorf("the gltoken agent did not start within 10s; see %s", logFile)
	case <-ctx.Done():
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return ctx.Err()
	}
	// The agent lives on in its own session; reap it if it ever exits while we run.
	go func() { _ = cmd.Wait() }()
	return nil
}
