package credhelper

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"

	"gltoken.dev/gltoken/internal/client"
	"gltoken.dev/gltoken/internal/dockercred"
)

func runDocker(ctx context.Context, version, name string, args []string, env func(string) string, stdin io.Reader, stdout, stderr io.Writer) int {
	versionLine := fmt.Sprintf("%s (%s) %s", name, modulePath, version)
	if len(args) != 1 {
		fmt.Fprintf(stdout, "Usage: %s <store|get|erase|list|version>\n", name)
		return 1
	}
	switch args[0] {
	case "--help", "-h", "help":
		fmt.Fprint(stdout, dockerHelp(name))
		return 0
	case "--version":
		fmt.Fprintln(stdout, versionLine)
		return 0
	}
	h := &dockerHelper{
		s: &settings{
			daemon:      envOr(env, "GLTOKEN_DAEMON", defaultDaemon),
			idTokenEnv:  defaultIDTokenEnv,
			idTokenFile: env("GLTOKEN_ID_TOKEN_FILE"),
			caFile:      env("GLTOKEN_CA_FILE"),
			margin:      defaultMargin,
			version:     version,
			env:         env,
			trace:       tracer(env, stderr),
		},
		scope:  envOr(env, "GLTOKEN_SCOPE", defaultScope),
		stderr: stderr,
	}
	h.s.trace("%s %s (version %s, daemon %s)", name, args[0], version, h.s.daemon)
	return dockercred.Handle(ctx, h, args[0], stdin, stdout, versionLine)
}

// dockerHelper answers docker with a registry credential minted for the
// project named by GLTOKEN_REGISTRY_PROJECT (default: the CI job's own project).
type dockerHelper struct {
	s      *settings
	scope  string
	stderr io.Writer
}

var _ dockercred.Helper = (*dockerHelper)(nil)

// notFound tells the user why on stderr and docker "not found" on stdout, so
// that docker goes on anonymously (public images still pull).
func (h *dockerHelper) notFound(format string, args ...any) error {
	failf(h.stderr, format, args...)
	return dockercred.ErrNotFound
}

func (h *dockerHelper) Get(ctx context.Context, serverURL string) (dockercred.Credentials, error) {
	host, err := dockercred.Host(serverURL)
	if err != nil {
		return dockercred.Credentials{}, fmt.Errorf("gltoken: %w", err)
	}
	if !h.s.hasIDToken() && h.s.env("GITLAB_CI") == "" {
		return h.developerGet(ctx, serverURL, host)
	}
	project := envOr(h.s.env, "GLTOKEN_REGISTRY_PROJECT", h.s.env("CI_PROJECT_PATH"))
	if project == "" {
		return dockercred.Credentials{}, h.notFound("no registry project for %s: set GLTOKEN_REGISTRY_PROJECT to the project path (in a CI job CI_PROJECT_PATH is used)", host)
	}
	scopes := []string{"read_registry"}
	if asked, err := parseScopes(h.scope); err == nil && slices.Contains(asked, "write_registry") {
		scopes = append(scopes, "write_registry")
	}
	resource := "https://" + host + "/" + project
	idToken, err := h.s.idToken()
	var noToken errNoIDToken
	if errors.As(err, &noToken) {
		return dockercred.Credentials{}, h.notFound("%v", err)
	}
	if err != nil {
		return dockercred.Credentials{}, fmt.Errorf("gltoken: %w", err)
	}
	c, err := h.s.client()
	if err != nil {
		return dockercred.Credentials{}, fmt.Errorf("gltoken: no credential for %s: %s", resource, describe(err))
	}
	defer c.Close()
	tok, err := h.s.exchange(ctx, c, idToken, resource, scopes)
	var de *client.Error
	if errors.As(err, &de) && de.Code == "invalid_target" {
		return dockercred.Credentials{}, h.notFound("no credential for %s: %s", resource, describe(err))
	}
	if err != nil {
		return dockercred.Credentials{}, fmt.Errorf("gltoken: no credential for %s: %s", resource, describe(err))
	}
	return dockercred.Credentials{ServerURL: serverURL, Username: tok.Username, Secret: tok.AccessToken}, nil
}

// developerGet answers docker for a person logged in with login: GitLab's /jwt/auth accepts
// the OAuth access token as the password (Gitlab::Auth#find_for_git_client, OAuth tokens
// first, abilities from the token's read_registry/write_registry scopes, membership as for the
// user). The GitLab instance is $GLTOKEN_HOST, else the only one logged in to.
func (h *dockerHelper) developerGet(ctx context.Context, serverURL, registry string) (dockercred.Credentials, error) {
	d := newDevSettings(h.s.env, h.s.trace)
	c := d.client()
	gitlabHost := h.s.env("GLTOKEN_HOST")
	if gitlabHost == "" {
		st, err := c.Status(ctx)
		if err != nil || len(st.Hosts) != 1 {
			return dockercred.Credentials{}, h.notFound("no credential for %s: no ID token, and not logged in to exactly one GitLab (set GLTOKEN_HOST, or run git-credential-gltoken login --scope read_registry)", registry)
		}
		gitlabHost = st.Hosts[0].Host
		if !slices.Contains(st.Hosts[0].Scopes, "read_registry") && !slices.Contains(st.Hosts[0].Scopes, "write_registry") {
			return dockercred.Credentials{}, h.notFound("no credential for %s: the login to %s has no registry scope: run git-credential-gltoken login --host %s --scope read_registry", registry, gitlabHost, gitlabHost)
		}
	}
	gitlabHost, err := credentialURL(gitlabHost)
	if err != nil {
		return dockercred.Credentials{}, fmt.Errorf("gltoken: bad GLTOKEN_HOST: %w", err)
	}
	tok, err := c.Token(ctx, gitlabHost)
	if err != nil {
		return dockercred.Credentials{}, h.notFound("no credential for %s: %v; %s", registry, err, loginAdvice(gitlabHost))
	}
	return dockercred.Credentials{ServerURL: serverURL, Username: "oauth2", Secret: tok.AccessToken}, nil
}

// Store keeps nothing: every get mints, or the daemon serves from its cache.
func (h *dockerHelper) Store(context.Context, dockercred.Credentials) error {
	h.s.trace("store: nothing to do")
	return nil
}

// Erase cannot revoke: docker names only the registry, not the credential.
func (h *dockerHelper) Erase(_ context.Context, serverURL string) error {
	fmt.Fprintln(h.stderr, oneLine("gltoken: erase "+serverURL+": nothing stored, nothing revoked; registry credentials from gltoken expire on their own"))
	return nil
}

func (h *dockerHelper) List(context.Context) (map[string]string, error) {
	return map[string]string{}, nil
}
