// Package credhelper is git-credential-gltoken: a git credential helper that
// answers git with a short-lived GitLab credential minted by the gltoken daemon
// (exchanged) in exchange for the CI job's ID token. Called under a name
// starting with docker-credential-, it is a docker credential helper for the
// GitLab container registry instead. Run is the whole program; the command's
// main only wires it to the process.
package credhelper

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"time"

	"gltoken.dev/gltoken/internal/client"
	"gltoken.dev/gltoken/internal/fingerprint"
)

const (
	defaultDaemon     = "unix:///run/gltoken/exchanged.sock"
	defaultIDTokenEnv = "GLTOKEN_ID_TOKEN"
	defaultScope      = "read_repository"
	defaultMargin     = 60 * time.Second
	maxIDTokenFile    = 64 << 10
	maxRetries        = 2                // retries of a 429
	maxRetryWait      = 10 * time.Second // longest Retry-After the helper waits for
	modulePath        = "gltoken.dev/gltoken"
)

// Run is the whole program; args[0] is argv[0], whose base name picks the
// docker mode when it starts with "docker-credential-". version is the
// program's version, for --version and the User-Agent.
func Run(ctx context.Context, version string, args []string, env func(string) string, stdin io.Reader, stdout, stderr io.Writer) int {
	argv0 := "git-credential-gltoken"
	if len(args) > 0 {
		argv0, args = args[0], args[1:]
	}
	name := filepath.Base(argv0)
	if strings.HasPrefix(name, "docker-credential-") {
		return runDocker(ctx, version, name, args, env, stdin, stdout, stderr)
	}
	return runGit(ctx, version, name, args, env, stdin, stdout, stderr)
}

// settings are what both modes need to reach the daemon.
type settings struct {
	daemon      string
	idTokenEnv  string
	idTokenFile string
	caFile      string
	margin      time.Duration
	version     string
	env         func(string) string
	trace       func(format string, args ...any)
}

func (s *settings) client() (*client.Client, error) {
	return client.New(s.daemon, client.Options{CAFile: s.caFile, UserAgent: "git-credential-gltoken/" + s.version})
}

// errNoIDToken is reported as one line naming the variable and id_tokens:.
type errNoIDToken struct{ variable string }

func (e errNoIDToken) Error() string {
	return fmt.Sprintf("no ID token: %s is not set; declare it in the CI job with the id_tokens: keyword (id_tokens: {%s: {aud: <the daemon's audience>}}) or point --id-token-file (GLTOKEN_ID_TOKEN_FILE) at a file holding it", e.variable, e.variable)
}

// hasIDToken tells the CI path (an ID token is there) from a person's.
func (s *settings) hasIDToken() bool {
	return s.idTokenFile != "" || strings.TrimSpace(s.env(s.idTokenEnv)) != ""
}

// idToken returns the job's ID token from --id-token-file or the environment.
func (s *settings) idToken() (string, error) {
	if s.idTokenFile != "" {
		f, err := os.Open(s.idTokenFile)
		if err != nil {
			return "", fmt.Errorf("cannot read the ID token file: %w; check --id-token-file", err)
		}
		defer f.Close()
		b, err := io.ReadAll(io.LimitReader(f, maxIDTokenFile+1))
		if err != nil {
			return "", fmt.Errorf("cannot read the ID token file %s: %w", s.idTokenFile, err)
		}
		if len(b) > maxIDTokenFile {
			return "", fmt.Errorf("the ID token file %s is larger than %d bytes; it must hold only the ID token", s.idTokenFile, maxIDTokenFile)
		}
		tok := strings.TrimSpace(string(b))
		if tok == "" {
			return "", fmt.Errorf("the ID token file %s is empty", s.idTokenFile)
		}
		s.trace("ID token from file %s (%s)", s.idTokenFile, fingerprint.Short(tok))
		return tok, nil
	}
	tok := strings.TrimSpace(s.env(s.idTokenEnv))
	if tok == "" {
		return "", errNoIDToken{s.idTokenEnv}
	}
	s.trace("ID token from $%s (%s)", s.idTokenEnv, fingerprint.Short(tok))
	return tok, nil
}

// exchange asks the daemon for a credential with at least margin of life
// left. A shorter one is refused, not asked for again: the daemon's answer
// is bounded by the rule's ttl and the ID token's life, which a second ask
// does not change (it would only mint a second unusable token).
func (s *settings) exchange(ctx context.Context, c *client.Client, idToken string, resources, scopes []string) (*client.Token, error) {
	s.trace("POST %s/v1/token resource=%s scope=%q", c.Daemon(), strings.Join(resources, " resource="), strings.Join(scopes, " "))
	tok, err := c.ExchangeFor(ctx, idToken, resources, scopes)
	// A 429 minted nothing, so asking again is safe: at most twice, each after the daemon's
	// Retry-After plus jitter (many jobs of one runner host must not come back at once), and
	// only while that stays within maxRetryWait.
	for retry := 1; retry <= maxRetries; retry++ {
		var de *client.Error
		if !errors.As(err, &de) || de.Status != 429 {
			break
		}
		wait := de.RetryAfter
		if wait <= 0 {
			wait = time.Second
		}
		if wait > maxRetryWait {
			s.trace("rate limited; Retry-After %s is longer than %s: not retrying", wait, maxRetryWait)
			break
		}
		wait += time.Duration(rand.Int64N(int64(wait/4 + 100*time.Millisecond)))
		s.trace("rate limited (request id %s): retry %d of %d in %s", orNone(de.RequestID), retry, maxRetries, wait.Round(time.Millisecond))
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, err
		case <-t.C:
		}
		tok, err = c.ExchangeFor(ctx, idToken, resources, scopes)
	}
	if err != nil {
		return nil, err
	}
	left := time.Until(tok.ExpiresAt)
	s.trace("got %s for %s, expires in %s (request id %s)", fingerprint.Short(tok.AccessToken), tok.Username, left.Round(time.Second), orNone(tok.RequestID))
	if left < s.margin {
		return nil, errTooShort{left: left, margin: s.margin, requestID: tok.RequestID}
	}
	return tok, nil
}

type errTooShort struct {
	left, margin time.Duration
	requestID    string
}

func (e errTooShort) Error() string {
	return fmt.Sprintf("the daemon's credential expires in %s, less than the %s safety margin (request id %s); the policy rule's ttl or the job's ID token (its timeout) is too short for it: lengthen one, or lower --margin",
		e.left.Round(time.Second), e.margin, orNone(e.requestID))
}

// describe turns an error into "<what went wrong>; <what to do>" for one
// line on stderr.
func describe(err error) string {
	var (
		de *client.Error
		te *client.TransportError
	)
	switch {
	case errors.As(err, &de):
		detail := de.Description
		if detail == "" {
			if de.Code != "" {
				detail = de.Code
			} else {
				detail = fmt.Sprintf("HTTP %d", de.Status)
			}
		}
		if de.RequestID != "" {
			detail += " (request id " + de.RequestID + ")"
		}
		return detail + "; " + advice(de)
	case errors.As(err, &te):
		return te.Error()
	case errors.Is(err, client.ErrInsecureDaemon):
		return err.Error() + "; fix --daemon or GLTOKEN_DAEMON"
	case errors.Is(err, client.ErrBadDaemon):
		return err.Error() + "; fix --daemon or GLTOKEN_DAEMON"
	case errors.Is(err, client.ErrBadResponse):
		return err.Error() + "; git-credential-gltoken and exchanged may disagree on the API: update both, and see the daemon's log"
	}
	return err.Error()
}

// The daemon names each check an ID token failed by the verifier's own
// words (internal/idtoken: ErrAudience, ErrExpired), several at once when
// several failed; advice is keyed on exactly those, so that a value that
// merely contains "aud" (an issuer URL, a project path) gets no aud advice.
const (
	failedAudience = "audience not accepted"
	failedExpiry   = "token expired"
)

// idTokenAdvice says what to fix for an invalid_grant: the aud only when
// the audience was refused, the job's timeout only when the token expired.
func idTokenAdvice(description string) string {
	var fix []string
	if strings.Contains(description, failedAudience) {
		fix = append(fix, "check that its aud (id_tokens: … aud:) is the daemon's audience")
	}
	if strings.Contains(description, failedExpiry) {
		fix = append(fix, "the job has outlived it (an ID token lives as long as the job's timeout)")
	}
	if len(fix) == 0 {
		return "the job's ID token was refused; the daemon's log has the detail under the request id"
	}
	return "the job's ID token was refused: " + strings.Join(fix, "; and ")
}

func advice(e *client.Error) string {
	switch {
	case e.Code == "invalid_grant":
		return idTokenAdvice(e.Description)
	case e.Code == "invalid_target":
		return "the trust policy does not grant this job that resource: ask the gltoken administrator for a rule (exchanged explain shows which check failed)"
	case e.Code == "invalid_scope":
		return "ask only for scopes the policy allows (--scope or GLTOKEN_SCOPE)"
	case e.Status == 429 || e.Code == "slow_down":
		if e.RetryAfter > 0 {
			return fmt.Sprintf("the daemon is rate limiting: retry in %s", e.RetryAfter)
		}
		return "the daemon is rate limiting: retry later"
	case e.Code == "temporarily_unavailable" || e.Status == 503:
		return "the daemon cannot reach GitLab right now: retry later"
	case e.Code == "invalid_request" || e.Code == "unsupported_grant_type":
		return "git-credential-gltoken and exchanged disagree on the protocol: update both"
	case e.Status >= 300 && e.Status < 400:
		return "the daemon URL redirects, which is never followed: fix --daemon or GLTOKEN_DAEMON"
	}
	return "see the daemon's log for this request id"
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

// oneLine keeps a message on one line.
func oneLine(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
}

func failf(stderr io.Writer, format string, args ...any) int {
	fmt.Fprintln(stderr, oneLine("gltoken: "+fmt.Sprintf(format, args...)))
	return 1
}

func tracer(env func(string) string, stderr io.Writer) func(string, ...any) {
	switch strings.ToLower(env("GLTOKEN_DEBUG")) {
	case "1", "true", "yes":
		return func(format string, args ...any) {
			fmt.Fprintln(stderr, oneLine("gltoken: debug: "+fmt.Sprintf(format, args...)))
		}
	}
	return func(string, ...any) {}
}

func envOr(env func(string) string, key, def string) string {
	if v := env(key); v != "" {
		return v
	}
	return def
}

// parseScopes splits a comma- or space-separated list, dropping duplicates.
func parseScopes(s string) ([]string, error) {
	var out []string
	seen := map[string]bool{}
	for _, f := range strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' }) {
		for _, r := range f {
			if (r < 'a' || r > 'z') && r != '_' {
				return nil, fmt.Errorf("scope %q is not a GitLab scope name", f)
			}
		}
		if !seen[f] {
			seen[f] = true
			out = append(out, f)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("no scope given")
	}
	return out, nil
}
