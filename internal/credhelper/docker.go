package credhelper

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	"gltoken.dev/gltoken/internal/client"
	"gltoken.dev/gltoken/internal/dockercred"
	"gltoken.dev/gltoken/internal/gitlabpath"
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
// projects of registryProjects. docker, podman and skopeo ask a credential
// helper for a registry host only, never for an image (the registry names the
// image in its token request to GitLab's /jwt/auth, after the credential is
// chosen), so the projects come from the job's environment.
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

// maxRegistryProjects is the daemon's limit of resources in one request.
const maxRegistryProjects = 20

// registryProjects are the projects a CI job's registry login is for:
// GLTOKEN_REGISTRY_PROJECTS (separated by commas or spaces; one credential
// for all of them, which the daemon grants only as one group deploy token),
// else GLTOKEN_REGISTRY_PROJECT, else the job's own project (CI_PROJECT_PATH).
// Each must be a project path (group/project), not an image path below one.
func registryProjects(env func(string) string) ([]string, error) {
	list, one := env("GLTOKEN_REGISTRY_PROJECTS"), env("GLTOKEN_REGISTRY_PROJECT")
	var raw []string
	switch {
	case strings.TrimSpace(list) != "" && one != "":
		return nil, errors.New("GLTOKEN_REGISTRY_PROJECT and GLTOKEN_REGISTRY_PROJECTS are both set: set one of them")
	case strings.TrimSpace(list) != "":
		raw = strings.FieldsFunc(list, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' || r == '\n' })
	case one != "":
		raw = []string{one}
	case env("CI_PROJECT_PATH") != "":
		raw = []string{env("CI_PROJECT_PATH")}
	}
	var out []string
	for _, p := range raw {
		if err := gitlabpath.CheckProject(p); err != nil {
			if len(p) > 100 {
				p = p[:100] + "…"
			}
			return nil, fmt.Errorf("bad registry project %q: %v; name project paths (group/project), not image paths or URLs", p, err)
		}
		if !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	if len(out) > maxRegistryProjects {
		return nil, fmt.Errorf("GLTOKEN_REGISTRY_PROJECTS names %d projects; at most %d", len(out), maxRegistryProjects)
	}
	return out, nil
}

func (h *dockerHelper) Get(ctx context.Context, serverURL string) (dockercred.Credentials, error) {
	host, err := dockercred.Host(serverURL)
	if err != nil {
		return dockercred.Credentials{}, fmt.Errorf("gltoken: %w", err)
	}
	if !h.s.hasIDToken() && h.s.env("GITLAB_CI") == "" {
		return h.developerGet(ctx, serverURL, host)
	}
	projects, err := registryProjects(h.s.env)
	if err != nil {
		return dockercred.Credentials{}, fmt.Errorf("gltoken: no credential for %s: %v", host, err)
	}
	if len(projects) == 0 {
		return dockercred.Credentials{}, h.notFound("no registry project for %s: set GLTOKEN_REGISTRY_PROJECT to the project path, or GLTOKEN_REGISTRY_PROJECTS to several (in a CI job CI_PROJECT_PATH is used)", host)
	}
	scopes := []string{"read_registry"}
	if asked, err := parseScopes(h.scope); err == nil && slices.Contains(asked, "write_registry") {
		scopes = append(scopes, "write_registry")
	}
	resources := make([]string, len(projects))
	for i, p := range projects {
		resources[i] = "https://" + host + "/" + p
	}
	what := resources[0]
	if len(resources) > 1 {
		what = "https://" + host + " (" + strings.Join(projects, ", ") + ")"
	}
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
		return dockercred.Credentials{}, fmt.Errorf("gltoken: no credential for %s: %s", what, describe(err))
	}
	defer c.Close()
	tok, err := h.s.exchange(ctx, c, idToken, resources, scopes)
	var de *client.Error
	if errors.As(err, &de) && de.Code == "invalid_target" {
		// Denied: docker, podman and skopeo then go on anonymously and
		// report only "unauthorized" or "denied", so the reason is said here.
		return dockercred.Credentials{}, h.notFound("registry login denied, going on anonymously: %s: %s", what, describe(err))
	}
	if err != nil {
		return dockercred.Credentials{}, fmt.Errorf("gltoken: no credential for %s: %s", what, describe(err))
	}
	return dockercred.Credentials{ServerURL: serverURL, Username: tok.Username, Secret: tok.AccessToken}, nil
}

// registryLoginScopes are the OAuth scopes GitLab gives registry abilities
// (Gitlab::Auth#abilities_for_scopes: read_registry pulls, write_registry
// pushes, read_api pulls, api does both); a token with none of them is
// refused by /jwt/auth (403 DENIED).
var registryLoginScopes = []string{"read_registry", "write_registry", "read_api", "api"}

// developerGet answers docker for a person logged in with login: GitLab's /jwt/auth accepts
// the OAuth access token as the password (Gitlab::Auth#find_for_git_client, OAuth tokens
// first, abilities from the token's scopes, membership as for the user). The GitLab instance
// is $GLTOKEN_HOST, else the only one logged in to. A login without a registry scope is
// refused here, with the login that would do, rather than by the registry's "denied".
func (h *dockerHelper) developerGet(ctx context.Context, serverURL, registry string) (dockercred.Credentials, error) {
	d := newDevSettings(h.s.env, h.s.trace)
	c := d.client()
	st, stErr := c.Status(ctx)
	gitlabHost := h.s.env("GLTOKEN_HOST")
	if gitlabHost == "" {
		if stErr != nil || len(st.Hosts) != 1 {
			return dockercred.Credentials{}, h.notFound("no credential for %s: no ID token, and not logged in to exactly one GitLab (set GLTOKEN_HOST, or run git-credential-gltoken login --scope read_registry)", registry)
		}
		gitlabHost = st.Hosts[0].Host
	}
	gitlabHost, err := credentialURL(gitlabHost)
	if err != nil {
		return dockercred.Credentials{}, fmt.Errorf("gltoken: bad GLTOKEN_HOST: %w", err)
	}
	if stErr == nil {
		for _, hs := range st.Hosts {
			if hs.Host == gitlabHost && !slices.ContainsFunc(hs.Scopes, func(sc string) bool { return slices.Contains(registryLoginScopes, sc) }) {
				return dockercred.Credentials{}, h.notFound("no credential for %s: the login to %s has no registry scope (it has %s): run git-credential-gltoken login --host %s --scope read_registry (write_registry to push)",
					registry, gitlabHost, strings.Join(hs.Scopes, ","), gitlabHost)
			}
		}
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
