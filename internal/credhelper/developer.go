package credhelper

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"gltoken.dev/gltoken/internal/agent"
	"gltoken.dev/gltoken/internal/fingerprint"
	"gltoken.dev/gltoken/internal/gitcred"
	"gltoken.dev/gltoken/internal/gitlaboauth"
	"gltoken.dev/gltoken/internal/loopback"
)

// The developer path: no ID token, a person logged in with `login`, an agent holding the grant.

const defaultHost = "https://gitlab.com"

// devSettings are what login, logout, status, the agent and a developer's get need.
type devSettings struct {
	host     string
	clientID string
	scope    string // as given; "" = gitlaboauth.DefaultScopes
	browser  bool
	remember bool
	socket   string
	grants   string
	argv0    string
	env      func(string) string
	trace    func(string, ...any)
}

func newDevSettings(env func(string) string, trace func(string, ...any)) *devSettings {
	return &devSettings{env: env, trace: trace, socket: agent.SocketPath(env), grants: agent.GrantsFile(env), argv0: "git-credential-gltoken"}
}

func (d *devSettings) client() *agent.Client { return agent.NewClient(d.socket) }

// oauthClient is the OAuth client for host. Plain http is refused except to loopback: the
// tokens MUST NOT cross a network in clear.
func oauthClient(host, clientID string) (*gitlaboauth.Client, error) {
	u, err := url.Parse(host)
	if err != nil {
		return nil, err
	}
	if u.Scheme == "http" {
		if !loopback.Host(u.Hostname()) {
			return nil, fmt.Errorf("%s is plain http: OAuth tokens would cross the network in clear; use https", host)
		}
	}
	return &gitlaboauth.Client{Host: host, ClientID: clientID}, nil
}

// loginAdvice is the one line a person sees when git cannot be answered for host.
func loginAdvice(host string) string {
	return "run git-credential-gltoken login --host " + host
}

// resolveClientID: --client-id, $GLTOKEN_CLIENT_ID, then git config gltoken.clientId
// (per host with gltoken.<url>.clientId).
func (d *devSettings) resolveClientID(ctx context.Context) string {
	if d.clientID != "" {
		return d.clientID
	}
	if v := d.env("GLTOKEN_CLIENT_ID"); v != "" {
		return v
	}
	out, err := exec.CommandContext(ctx, "git", "config", "--get-urlmatch", "gltoken.clientId", d.host).Output()
	if err == nil {
		return strings.TrimSpace(string(out))
	}
	return ""
}

func loginScopes(s string) ([]string, error) {
	if strings.TrimSpace(s) == "" {
		return slices.Clone(gitlaboauth.DefaultScopes), nil
	}
	asked, err := parseScopes(s)
	if err != nil {
		return nil, err
	}
	// git needs read_repository for every clone and fetch; other scopes come only by name.
	if !slices.Contains(asked, "read_repository") {
		asked = append([]string{"read_repository"}, asked...)
	}
	// GitLab's registry lets write_registry push but not pull, and a push pulls
	// too (docker checks for layers first): GitLab documents both for a push.
	if i := slices.Index(asked, "write_registry"); i >= 0 && !slices.Contains(asked, "read_registry") {
		asked = slices.Insert(asked, i, "read_registry")
	}
	return asked, nil
}

func runLogin(ctx context.Context, d *devSettings, stderr io.Writer) int {
	raw := d.host
	if raw == "" {
		raw = envOr(d.env, "GLTOKEN_HOST", defaultHost)
	}
	host, err := credentialURL(raw)
	if err != nil {
		return failf(stderr, "bad --host: %v; pass the GitLab URL as https://host[:port]", err)
	}
	d.host = host
	clientID := d.resolveClientID(ctx)
	if clientID == "" {
		return failf(stderr, "login needs the OAuth application's client id: pass --client-id ID, set GLTOKEN_CLIENT_ID, or git config --global gltoken.%s.clientId ID (your GitLab administrator registers the application; see the README)", host)
	}
	scopes, err := loginScopes(d.scope)
	if err != nil {
		return failf(stderr, "bad --scope: %v; give GitLab scope names separated by commas, e.g. read_repository,write_repository", err)
	}
	oc, err := oauthClient(host, clientID)
	if err != nil {
		return failf(stderr, "cannot log in: %v", err)
	}
	var g gitlaboauth.Grant
	if d.browser {
		g, err = oc.Browser(ctx, scopes, func(authURL string) error {
			fmt.Fprintln(stderr, oneLine("gltoken: to log in to "+host+", open this page in a browser: "+authURL))
			openBrowser(d.env, authURL, d.trace)
			return nil
		})
	} else {
		g, err = oc.Device(ctx, scopes, func(p gitlaboauth.Prompt) {
			fmt.Fprintln(stderr, oneLine(fmt.Sprintf("gltoken: to log in to %s, open %s and enter the code %s (it expires in %s)", host, p.VerificationURI, p.UserCode, p.ExpiresIn)))
			if p.VerificationURIComplete != "" {
				fmt.Fprintln(stderr, oneLine("gltoken: or open "+p.VerificationURIComplete))
			}
		})
	}
	if err != nil {
		return failf(stderr, "login to %s failed: %v", host, err)
	}
	if err := d.ensureAgent(ctx); err != nil {
		return failf(stderr, "logged in to %s, but cannot hand the grant to the agent: %v; the grant was not kept", host, err)
	}
	st, err := d.client().Put(ctx, g, d.remember)
	if err != nil {
		return failf(stderr, "logged in to %s, but the agent did not take the grant: %v", host, err)
	}
	kept := ""
	for _, h := range st.Hosts {
		if h.Host == host {
			kept = h.Kept
		}
	}
	fmt.Fprintln(stderr, oneLine(fmt.Sprintf("gltoken: logged in to %s with scopes %s; the grant is kept %s", host, strings.Join(g.Scopes, ","), kept)))
	return 0
}

func openBrowser(env func(string) string, u string, trace func(string, ...any)) {
	cmdline := env("BROWSER")
	if cmdline == "" {
		cmdline = "xdg-open"
	}
	f := strings.Fields(cmdline)
	if _, err := exec.LookPath(f[0]); err != nil {
		trace("no browser to open (%s): open the URL yourself", f[0])
		return
	}
	cmd := exec.Command(f[0], append(f[1:], u)...)
	if err := cmd.Start(); err != nil {
		trace("cannot start the browser: %v", err)
		return
	}
	go func() { _ = cmd.Wait() }()
}

// ensureAgent starts an agent if none answers.
func (d *devSettings) ensureAgent(ctx context.Context) error {
	_, err := d.client().Status(ctx)
	if !errors.Is(err, agent.ErrNotRunning) {
		return err
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(d.socket), 0o700); err != nil {
		return err
	}
	d.trace("starting the agent on %s", d.socket)
	return agent.Start(ctx, d.argv0, exe, []string{"agent", "--exit-when-empty", "--socket", d.socket, "--grants-file", d.grants},
		os.Environ(), filepath.Join(filepath.Dir(d.socket), "agent.log"))
}

func runLogout(ctx context.Context, d *devSettings, stderr io.Writer) int {
	c := d.client()
	host := d.host
	if host == "" {
		st, err := c.Status(ctx)
		if errors.Is(err, agent.ErrNotRunning) {
			return failf(stderr, "not logged in anywhere (no agent runs on %s)", d.socket)
		}
		if err != nil {
			return failf(stderr, "cannot reach the agent: %v", err)
		}
		switch len(st.Hosts) {
		case 0:
			return failf(stderr, "not logged in anywhere")
		case 1:
			host = st.Hosts[0].Host
		default:
			var hs []string
			for _, h := range st.Hosts {
				hs = append(hs, h.Host)
			}
			return failf(stderr, "logged in to several GitLab instances (%s): pass --host", strings.Join(hs, ", "))
		}
	}
	host, err := credentialURL(host)
	if err != nil {
		return failf(stderr, "bad --host: %v", err)
	}
	err = c.Logout(ctx, host)
	var ae *agent.Error
	switch {
	case errors.Is(err, agent.ErrNotRunning), errors.As(err, &ae) && ae.Code == agent.CodeNotLoggedIn:
		return failf(stderr, "not logged in to %s", host)
	case errors.As(err, &ae) && ae.Code == agent.CodeRevokeFailure:
		return failf(stderr, "forgot the login to %s, but GitLab did not confirm the revocation (%s); its tokens expire on their own, or revoke the application under Preferences > Applications", host, ae.Description)
	case err != nil:
		return failf(stderr, "cannot log out of %s: %v", host, err)
	}
	fmt.Fprintln(stderr, oneLine("gltoken: logged out of "+host+": the grant was revoked at GitLab and forgotten"))
	return 0
}

func runStatus(ctx context.Context, d *devSettings, stdout, stderr io.Writer) int {
	st, err := d.client().Status(ctx)
	if errors.Is(err, agent.ErrNotRunning) {
		fmt.Fprintf(stdout, "not logged in (no agent runs on %s)\n", d.socket)
		return 0
	}
	if err != nil {
		return failf(stderr, "cannot reach the agent: %v", err)
	}
	if len(st.Hosts) == 0 {
		fmt.Fprintf(stdout, "not logged in (agent pid %d on %s)\n", st.PID, d.socket)
		return 0
	}
	for _, h := range st.Hosts {
		left := time.Until(h.ExpiresAt).Round(time.Second)
		fmt.Fprintf(stdout, "%s\n  scopes:  %s\n  access token expires: %s (in %s; renewed at half-life)\n  kept:    %s\n",
			h.Host, strings.Join(h.Scopes, ", "), h.ExpiresAt.UTC().Format(time.RFC3339), left, h.Kept)
	}
	fmt.Fprintf(stdout, "agent pid %d on %s\n", st.PID, d.socket)
	return 0
}

// runAgent is the agent process: it listens, says "ok" on standard output, and serves until
// SIGTERM/SIGINT (or, with --exit-when-empty, until no grant is left).
func runAgent(ctx context.Context, d *devSettings, exitWhenEmpty bool, stdout, stderr io.Writer) int {
	log := slog.New(slog.NewTextHandler(stderr, nil))
	var keeper agent.Keeper
	if d.grants != "" {
		keeper = agent.FileKeeper{Path: d.grants}
	}
	srv, err := agent.NewServer(agent.Options{
		Oauth: func(host, clientID string) agent.Oauth {
			return &gitlaboauth.Client{Host: host, ClientID: clientID}
		},
		Keeper:        keeper,
		ExitWhenEmpty: exitWhenEmpty,
		Log:           log,
	})
	if err != nil {
		return failf(stderr, "agent: %v", err)
	}
	l, err := agent.Listen(d.socket)
	if err != nil {
		return failf(stderr, "agent: %v", err)
	}
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, os.Interrupt)
	defer stop()
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	fmt.Fprintln(stdout, "ok")
	if f, ok := stdout.(*os.File); ok {
		_ = f.Close() // the starter waits for "ok", then lets go
	}
	log.Info("agent listening", "socket", d.socket, "pid", os.Getpid())
	if err := srv.Serve(l); err != nil {
		return failf(stderr, "agent: %v", err)
	}
	_ = os.Remove(d.socket)
	return 0
}

// developerGet answers git for a person logged in with login.
func developerGet(ctx context.Context, s *settings, d *devSettings, req *gitcred.Request, stdout, stderr io.Writer) int {
	host := req.Protocol + "://" + strings.ToLower(req.Host)
	c := d.client()
	tok, err := c.Token(ctx, host)
	if errors.Is(err, agent.ErrNotRunning) {
		if _, statErr := os.Stat(d.grants); d.grants != "" && statErr == nil {
			if err = d.ensureAgent(ctx); err == nil {
				tok, err = c.Token(ctx, host)
			}
		}
	}
	var ae *agent.Error
	switch {
	case errors.Is(err, agent.ErrNotRunning), errors.As(err, &ae) && ae.Code == agent.CodeNotLoggedIn:
		if s.env("GITLAB_CI") != "" {
			return failf(stderr, "%v", errNoIDToken{s.idTokenEnv})
		}
		return failf(stderr, "not logged in to %s and no ID token ($%s is not set): %s", host, s.idTokenEnv, loginAdvice(host))
	case errors.As(err, &ae) && ae.Code == agent.CodeLoginNeeded:
		return failf(stderr, "the login to %s has ended (GitLab refused to renew it): %s", host, loginAdvice(host))
	case err != nil:
		return failf(stderr, "no credential for %s: %v", host, err)
	}
	if left := time.Until(tok.ExpiresAt); left < s.margin {
		return failf(stderr, "no credential for %s: the access token expires in %s, less than the %s safety margin; %s", host, left.Round(time.Second), s.margin, loginAdvice(host))
	}
	var out bytes.Buffer
	if err := gitcred.Write(&out, gitcred.Credential{Username: "oauth2", Password: tok.AccessToken, PasswordExpiry: tok.ExpiresAt}); err != nil {
		return failf(stderr, "no credential for %s: the agent's token cannot be given to git: %v", host, err)
	}
	if _, err := stdout.Write(out.Bytes()); err != nil {
		return failf(stderr, "cannot answer git: %v", err)
	}
	s.trace("answered git with the OAuth token %s for %s", fingerprint.Short(tok.AccessToken), host)
	return 0
}

// developerErase: git was refused with our access token; the agent refreshes before the next get.
func developerErase(ctx context.Context, s *settings, d *devSettings, req *gitcred.Request) {
	host := req.Protocol + "://" + strings.ToLower(req.Host)
	if err := d.client().Reject(ctx, host, req.Password); err != nil {
		s.trace("erase: the agent did not take the rejection: %v", err)
		return
	}
	s.trace("erase: the agent renews %s's token before the next get", host)
}
