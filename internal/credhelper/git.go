package credhelper

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os/exec"
	"regexp"
	"slices"
	"strings"

	"github.com/spf13/pflag"

	"gltoken.dev/gltoken/internal/client"
	"gltoken.dev/gltoken/internal/fingerprint"
	"gltoken.dev/gltoken/internal/gitcred"
)

func runGit(ctx context.Context, version, name string, args []string, env func(string) string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := pflag.NewFlagSet(name, pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	s := &settings{version: version, env: env, trace: tracer(env, stderr)}
	fs.StringVar(&s.daemon, "daemon", envOr(env, "GLTOKEN_DAEMON", defaultDaemon), "")
	fs.StringVar(&s.idTokenEnv, "id-token-env", defaultIDTokenEnv, "")
	fs.StringVar(&s.idTokenFile, "id-token-file", env("GLTOKEN_ID_TOKEN_FILE"), "")
	fs.StringVar(&s.caFile, "ca-file", env("GLTOKEN_CA_FILE"), "")
	fs.DurationVar(&s.margin, "margin", defaultMargin, "")
	scope := fs.String("scope", envOr(env, "GLTOKEN_SCOPE", defaultScope), "")
	global := fs.Bool("global", false, "")
	host := fs.String("host", "", "")
	remove := fs.Bool("remove", false, "")
	d := newDevSettings(env, s.trace)
	fs.StringVar(&d.clientID, "client-id", "", "")
	fs.BoolVar(&d.browser, "browser", false, "")
	fs.BoolVar(&d.remember, "remember", false, "")
	fs.StringVar(&d.socket, "socket", d.socket, "")
	fs.StringVar(&d.grants, "grants-file", d.grants, "")
	exitWhenEmpty := fs.Bool("exit-when-empty", false, "")
	help := fs.BoolP("help", "h", false, "")
	showVersion := fs.Bool("version", false, "")
	if err := fs.Parse(args); err != nil {
		fmt.Fprintf(stderr, "gltoken: %s; see %s --help\n", oneLine(err.Error()), name)
		return 2
	}
	switch {
	case *help:
		fmt.Fprint(stdout, gitHelp(name))
		return 0
	case *showVersion:
		fmt.Fprintf(stdout, "%s %s\n", name, version)
		return 0
	case fs.NArg() == 0:
		fmt.Fprintf(stderr, "gltoken: no operation; usage: %s [options] get|store|erase, %s login|logout|status [--host URL], or %s configure [--global] [--host URL] [--remove]; see --help\n", name, name, name)
		return 2
	}
	if s.margin < 0 {
		return failf(stderr, "--margin must not be negative")
	}
	op := fs.Arg(0)
	s.trace("%s %s (version %s, daemon %s)", name, op, version, s.daemon)
	switch op {
	case "get":
		scopes, err := parseScopes(*scope)
		if err != nil {
			return failf(stderr, "bad --scope or GLTOKEN_SCOPE: %v; give GitLab scope names separated by commas, e.g. read_repository,write_repository", err)
		}
		return gitGet(ctx, s, d, scopes, stdin, stdout, stderr)
	case "store":
		// Nothing to store: every get mints (or the daemon serves from its cache).
		_, _ = gitcred.Read(stdin)
		s.trace("store: nothing to do")
		return 0
	case "erase":
		return gitErase(ctx, s, d, stdin, stderr)
	case "login":
		d.host, d.scope = *host, ""
		if fs.Changed("scope") {
			d.scope = *scope
		}
		return runLogin(ctx, d, stderr)
	case "logout":
		d.host = *host
		return runLogout(ctx, d, stderr)
	case "status":
		return runStatus(ctx, d, stdout, stderr)
	case "agent":
		return runAgent(ctx, d, *exitWhenEmpty, stdout, stderr)
	case "configure":
		return configure(ctx, *global, *host, *remove, env, stdout, stderr)
	case "version":
		fmt.Fprintf(stdout, "%s %s\n", name, version)
		return 0
	}
	// git may grow new operations; a helper ignores those it does not know.
	s.trace("ignoring unknown operation %q", op)
	return 0
}

func gitGet(ctx context.Context, s *settings, d *devSettings, scopes []string, stdin io.Reader, stdout, stderr io.Writer) int {
	req, err := gitcred.Read(stdin)
	if err != nil {
		return failf(stderr, "cannot read git's request: %v; this git speaks a credential protocol gltoken does not understand", err)
	}
	s.trace("request protocol=%s host=%s path=%s", req.Protocol, req.Host, req.Path)
	if req.Protocol != "" && req.Protocol != "https" && req.Protocol != "http" {
		s.trace("not an HTTP(S) credential: no answer")
		return 0
	}
	if !s.hasIDToken() {
		return developerGet(ctx, s, d, req, stdout, stderr)
	}
	resource, err := req.Resource()
	switch {
	case errors.Is(err, gitcred.ErrNoPath):
		base := req.Protocol + "://" + req.Host
		return failf(stderr, "git sent no repository path for %s, so gltoken cannot tell which repository to ask for; run: git config --global credential.%s.useHttpPath true", base, base)
	case err != nil:
		return failf(stderr, "cannot tell which repository git wants: %v", err)
	}
	idToken, err := s.idToken()
	if err != nil {
		return failf(stderr, "%v", err)
	}
	c, err := s.client()
	if err != nil {
		return failf(stderr, "no credential for %s: %s", resource, describe(err))
	}
	defer c.Close()
	tok, err := s.exchange(ctx, c, idToken, []string{resource}, scopes)
	if err != nil {
		return failf(stderr, "no credential for %s: %s", resource, describe(err))
	}
	var out bytes.Buffer
	err = gitcred.Write(&out, gitcred.Credential{Username: tok.Username, Password: tok.AccessToken, PasswordExpiry: tok.ExpiresAt})
	if err != nil {
		return failf(stderr, "no credential for %s: the daemon's answer cannot be given to git: %v (request id %s); report this to the gltoken administrator", resource, err, orNone(tok.RequestID))
	}
	if _, err := stdout.Write(out.Bytes()); err != nil {
		return failf(stderr, "cannot answer git: %v", err)
	}
	s.trace("answered git with %s for %s", fingerprint.Short(tok.AccessToken), tok.Username)
	if note := protectedBranchNote(tok); note != "" {
		fmt.Fprintln(stderr, oneLine("gltoken: note: "+note))
	}
	return 0
}

// protectedBranchNote warns when a credential for pushing has a role below
// maintainer: GitLab refuses its pushes to protected branches (the default
// branch is protected, maintainers only, by default) with "You are not
// allowed to push code to protected branches", which names neither the role
// nor the policy.
func protectedBranchNote(tok *client.Token) string {
	if tok.AccessLevel <= 0 || tok.AccessLevel >= 40 || !slices.Contains(strings.Fields(tok.Scope), "write_repository") {
		return ""
	}
	return fmt.Sprintf("this credential's role is %s (access level %d): GitLab refuses its pushes to protected branches (the default branch is protected for maintainers by default); to push there, the policy rule must grant access_level: maintainer",
		roleName(tok.AccessLevel), tok.AccessLevel)
}

func roleName(level int) string {
	switch level {
	case 10:
		return "guest"
	case 15:
		return "planner"
	case 20:
		return "reporter"
	case 30:
		return "developer"
	}
	return "below maintainer"
}

// gitErase revokes the password git rejected, so that the next get mints a
// fresh credential instead of the daemon serving the same one from its cache.
// mintedUsername matches the usernames of the credentials exchanged mints:
// deploy tokens (gitlab+deploy-token-N), project and group access tokens
// (their bot users, project_N_bot_HEX / group_N_bot_HEX, or the token's
// name when the bot could not be looked up).
var mintedUsername = regexp.MustCompile(`^(gitlab\+deploy-token-[0-9]+|(project|group)_[0-9]+_bot_[0-9a-f]+|gltoken-[a-z2-7]+)$`)

func gitErase(ctx context.Context, s *settings, d *devSettings, stdin io.Reader, stderr io.Writer) int {
	req, err := gitcred.Read(stdin)
	if err != nil {
		return failf(stderr, "cannot read git's request: %v", err)
	}
	if req.Password == "" {
		s.trace("erase without a password: nothing to revoke")
		return 0
	}
	if req.Username == "oauth2" && !s.hasIDToken() {
		developerErase(ctx, s, d, req)
		return 0
	}
	// git sends erase to every helper; a credential another helper gave (a
	// person's own token) is not ours to send anywhere.
	if !mintedUsername.MatchString(req.Username) {
		s.trace("erase for user %q: not a credential gltoken hands out, left alone", req.Username)
		return 0
	}
	fp := fingerprint.Short(req.Password)
	c, err := s.client()
	if err != nil {
		return failf(stderr, "cannot revoke the rejected credential %s: %s", fp, describe(err))
	}
	defer c.Close()
	s.trace("POST %s/v1/revoke token=%s", c.Daemon(), fp)
	if err := c.Revoke(ctx, req.Password); err != nil {
		return failf(stderr, "cannot revoke the rejected credential %s: %s", fp, describe(err))
	}
	s.trace("revoked %s", fp)
	return 0
}

// configure writes (or removes) the git config lines gltoken needs. In a CI job
// (GITLAB_CI set) it writes the global config (the job's $HOME) unless told
// otherwise, and the path setting the CI path needs. On a person's machine it
// writes only the helper: the login path needs no repository path, so other
// helpers' entries (credential.helper=store keeps entries without a path) keep
// matching. Unlike get, it runs git as a subprocess.
func configure(ctx context.Context, global bool, host string, remove bool, env func(string) string, stdout, stderr io.Writer) int {
	if host == "" {
		host = env("CI_SERVER_URL")
	}
	if host == "" {
		return failf(stderr, "configure needs the GitLab URL: pass --host https://gitlab.example.com")
	}
	base, err := credentialURL(host)
	if err != nil {
		return failf(stderr, "bad --host %q: %v; pass the GitLab URL as https://host[:port]", host, err)
	}
	inCI := env("GITLAB_CI") != ""
	if inCI || !insideRepository(ctx) {
		global = true // a job's checkout is not where another project's clone looks
	}
	scope := []string{"config"}
	if global {
		scope = append(scope, "--global")
	}
	helperKey := "credential." + base + ".helper"
	pathKey := "credential." + base + ".useHttpPath"
	var steps [][]string
	if remove {
		steps = [][]string{
			append(append([]string{}, scope...), "--unset-all", helperKey, "^gltoken( |$)"),
			append(append([]string{}, scope...), "--unset-all", pathKey),
		}
	} else {
		others := otherHelpers(ctx, base)
		steps = [][]string{append(append([]string{}, scope...), helperKey, "gltoken")}
		if inCI {
			steps = append(steps, append(append([]string{}, scope...), pathKey, "true"))
		}
		for _, o := range others {
			if inCI {
				fmt.Fprintln(stderr, oneLine(fmt.Sprintf("gltoken: warning: %s=%s also answers for %s; with useHttpPath its entries without a repository path stop matching, and it may answer before gltoken: remove it from this job's git config", o.key, o.value, base)))
			} else {
				fmt.Fprintln(stderr, oneLine(fmt.Sprintf("gltoken: note: %s=%s is asked before gltoken for %s and answers with what it stored; to use gltoken's login for this host, remove the host's entries from it (e.g. the %s line of ~/.git-credentials)", o.key, o.value, base, base)))
			}
		}
	}
	for _, args := range steps {
		cmd := exec.CommandContext(ctx, "git", args...)
		var errOut bytes.Buffer
		cmd.Stderr = &errOut
		err := cmd.Run()
		var ee *exec.ExitError
		if remove && errors.As(err, &ee) && ee.ExitCode() == 5 {
			err = nil // the key was not set: nothing to remove
		}
		if err != nil {
			msg := strings.TrimSpace(errOut.String())
			if msg == "" {
				msg = err.Error()
			}
			return failf(stderr, "git %s failed: %s; fix it, or run the command yourself", strings.Join(args, " "), msg)
		}
		fmt.Fprintf(stdout, "git %s\n", strings.Join(args, " "))
	}
	if !remove && !global {
		fmt.Fprintf(stdout, "configured this repository; use --global to configure every repository of %s\n", base)
	}
	return 0
}

func insideRepository(ctx context.Context) bool {
	out, err := exec.CommandContext(ctx, "git", "rev-parse", "--is-inside-work-tree").Output()
	return err == nil && strings.TrimSpace(string(out)) == "true"
}

type configEntry struct{ key, value string }

// otherHelpers lists the credential helpers other than gltoken that git asks
// for base: credential.helper and credential.<url>.helper whose URL covers
// base (git applies every matching entry, in config order).
func otherHelpers(ctx context.Context, base string) []configEntry {
	out, err := exec.CommandContext(ctx, "git", "config", "--get-regexp", `^credential\..*helper$`).Output()
	if err != nil {
		return nil
	}
	var found []configEntry
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		key, value, _ := strings.Cut(line, " ")
		if value == "" || strings.HasPrefix(value, "gltoken") {
			continue
		}
		lower := strings.ToLower(key)
		u := strings.TrimSuffix(strings.TrimPrefix(lower, "credential."), ".helper")
		if lower != "credential.helper" && u != base && !strings.HasPrefix(u, base+"/") {
			continue
		}
		found = append(found, configEntry{key, value})
	}
	return found
}

// credentialURL reduces a GitLab URL to the scheme://host[:port] git matches
// credential.<url>.* keys against.
func credentialURL(s string) (string, error) {
	if !strings.Contains(s, "://") {
		s = "https://" + s
	}
	u, err := url.Parse(s)
	if err != nil {
		return "", errors.New("not a URL")
	}
	if u.Scheme != "https" && u.Scheme != "http" {
		return "", errors.New("scheme must be https (or http)")
	}
	if u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" || strings.Trim(u.Path, "/") != "" {
		return "", errors.New("only scheme://host[:port] is allowed")
	}
	return u.Scheme + "://" + strings.ToLower(u.Host), nil
}
