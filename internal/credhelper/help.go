package credhelper

import "strings"

func gitHelp(name string) string {
	return strings.ReplaceAll(`NAME
    {{name}} - git credential helper that mints short-lived GitLab credentials

SYNOPSIS
    {{name}} [--daemon URL] [--id-token-env VAR | --id-token-file PATH]
        [--scope SCOPE[,SCOPE…]] [--ca-file PEM] [--margin DURATION] get|store|erase
    {{name}} configure [--global] [--host URL] [--remove]
    {{name}} login [--host URL] [--scope SCOPE[,SCOPE…]] [--browser]
        [--client-id ID] [--remember]
    {{name}} logout [--host URL]
    {{name}} status
    {{name}} agent [--socket PATH] [--grants-file PATH]
    {{name}} --help | --version
    docker-credential-gltoken get|store|erase|list|version

DESCRIPTION
    git runs this helper when it needs a password for an https remote. The
    helper sends the CI job's GitLab ID token and the repository URL to the
    gltoken daemon (exchanged), which checks its trust policy and mints a
    credential that lives only as long as the policy, the daemon and the ID
    token allow. The helper prints username, password and password_expiry_utc
    for git, and never a credential with less than --margin of life left.

    get     answer git with a freshly minted (or daemon-cached) credential.
    store   does nothing: nothing is kept on disk.
    erase   git rejected a credential (HTTP 401): revoke exactly that one, so
            the next get mints afresh.
    configure
            write the git config lines below (runs git config); with
            --remove, delete them. In a CI job (GITLAB_CI set), or outside
            a repository, it writes the global config; only in a CI job it
            writes useHttpPath (the login path needs no repository path, so
            a credential.helper=store beside it keeps working). It warns
            about other helpers that answer for the host.
    Any other operation is ignored (exit 0), as git asks of helpers.

    On a person's machine (no ID token in the environment) the helper
    answers git with a GitLab OAuth access token instead, as username oauth2:

    login   log in to GitLab once: the OAuth device flow prints a URL and a
            code on standard error; approve it in any browser (this works
            over SSH). --browser uses the authorization code flow with PKCE
            and a loopback redirect instead. The grant goes to the agent.
    logout  revoke the grant at GitLab and forget it.
    status  list the hosts logged in to, their scopes, when the access token
            expires and where the grant is kept; never a secret.
    agent   the per-user process that holds the grants, on a Unix socket in
            a 0700 directory, answering the same user only. login starts one
            when none runs (it stops when its last grant is gone); or run it
            as a systemd user unit. It renews the access token at half its
            life, one renewal at a time however many git processes ask.
            The refresh token lives in the agent's memory only, unless login
            was given --remember: then also in a 0600 file that survives a
            reboot.

    When the daemon answers 429 (rate limited; nothing was minted), the
    helper asks again at most twice, each time after the daemon's
    Retry-After plus a little jitter, if that is at most 10s.

    Every failure is one line on standard error, starting "gltoken:", that
    says what failed and what to do; nothing is printed on standard output.

    Installed or linked as docker-credential-gltoken, the same binary is a
    docker credential helper: get mints a registry credential for
    https://<registry host>/<project> (GLTOKEN_REGISTRY_PROJECT, or every
    project in GLTOKEN_REGISTRY_PROJECTS), list prints {}, store and erase
    keep and revoke nothing; docker-credential-gltoken --help says more.

OPTIONS
    --daemon URL
        The daemon: unix:///path/to/socket, https://host[:port], or plain
        http:// to 127.0.0.1, [::1] or localhost only (the ID token never
        crosses a network in clear). Default: $GLTOKEN_DAEMON, else
        unix:///run/gltoken/exchanged.sock.
    --id-token-env VAR
        The environment variable holding the ID token. Default GLTOKEN_ID_TOKEN.
    --id-token-file PATH
        Read the ID token from PATH instead. Default $GLTOKEN_ID_TOKEN_FILE.
    --scope SCOPE[,SCOPE…]
        GitLab scopes to ask for, separated by commas or spaces
        (read_repository, write_repository, read_registry, …).
        Default $GLTOKEN_SCOPE, else read_repository.
    --ca-file PEM
        Also trust this CA for an https daemon. Default $GLTOKEN_CA_FILE.
    --margin DURATION
        Refuse credentials with less life left than this (asking the daemon
        once more first). Default 60s.
    --global
        configure: write to the global git config instead of the repository's
        (the default in a CI job and outside a repository).
    --host URL
        configure: the GitLab URL, https://gitlab.example.com. Default
        $CI_SERVER_URL.
    --remove
        configure: remove the lines instead of writing them.
    --host URL
        login, logout: the GitLab URL. login's default: $GLTOKEN_HOST, else
        https://gitlab.com; logout's: the only host logged in to.
    --scope SCOPE[,SCOPE…]
        login: the scopes to ask for. Default read_repository (clone and
        fetch); name write_repository to push, read_registry/write_registry
        for docker. read_repository is always included; api only if named.
    --client-id ID
        login: the OAuth application's id. Default $GLTOKEN_CLIENT_ID, else
        git config gltoken.<url>.clientId (or gltoken.clientId).
    --browser
        login: use a browser on this machine (authorization code with PKCE on
        http://127.0.0.1:PORT/) instead of the device flow. The browser is
        $BROWSER, else xdg-open; the URL is printed too.
    --remember
        login: keep the grant in a 0600 file so it survives a reboot
        ($XDG_STATE_HOME/gltoken/grants.json, else
        ~/.local/state/gltoken/grants.json). Off by default.
    --socket PATH, --grants-file PATH
        agent: where it listens and keeps remembered grants.
    -h, --help
        Print this page.
    --version
        Print the version.

ENVIRONMENT
    GLTOKEN_DAEMON          the daemon URL (see --daemon).
    GLTOKEN_ID_TOKEN        the ID token (a GitLab CI/CD ID token, a JWT).
    GLTOKEN_ID_TOKEN_FILE   a file holding the ID token (see --id-token-file).
    GLTOKEN_SCOPE           scopes (see --scope); in docker mode only
                            write_registry matters (read_registry is implied).
    GLTOKEN_CA_FILE         CA bundle for an https daemon.
    GLTOKEN_REGISTRY_PROJECT
                            docker mode: the registry project path; default
                            $CI_PROJECT_PATH.
    GLTOKEN_REGISTRY_PROJECTS
                            docker mode: several project paths, one
                            credential for all (see docker-credential-gltoken
                            --help).
    GLTOKEN_DEBUG=1         trace each step on standard error; secrets appear
                            only as SHA-256 fingerprints.
    CI_SERVER_URL           configure: the default --host.
    GITLAB_CI               set in a GitLab CI job: without an ID token, say
                            how to declare one (not how to log in).
    GLTOKEN_HOST            login: the default --host.
    GLTOKEN_CLIENT_ID       login: the default --client-id.
    GLTOKEN_AGENT_SOCKET    the agent's socket. Default
                            $XDG_RUNTIME_DIR/gltoken/agent.sock, else
                            /tmp/gltoken-UID/agent.sock.
    BROWSER                 login --browser: the browser command.

GIT CONFIGURATION
    git must send the repository path, or the helper cannot tell which
    repository to ask for:

        git config --global credential.https://gitlab.example.com.helper gltoken
        git config --global credential.https://gitlab.example.com.useHttpPath true

    {{name}} configure --global --host https://gitlab.example.com writes both.
    A storing helper (cache, store) configured before this one may serve an
    expired token to a git older than 2.40, which ignores password_expiry_utc.

EXAMPLES
    In .gitlab-ci.yml:

        job:
          id_tokens:
            GLTOKEN_ID_TOKEN:
              aud: https://gltoken.example.com
          variables:
            GLTOKEN_DAEMON: https://gltoken.example.com
          script:
            - {{name}} configure --global --host "$CI_SERVER_URL"
            - git clone https://gitlab.example.com/platform/lib.git

    Push access (the policy must allow write_repository):

        GLTOKEN_SCOPE=read_repository,write_repository git push

    By hand, as git calls it:

        printf 'protocol=https\nhost=gitlab.example.com\npath=platform/lib.git\n\n' |
            GLTOKEN_DEBUG=1 {{name}} get

    On a laptop, once (then git clone, fetch and push just work):

        git config --global credential.https://gitlab.example.com.helper gltoken
        {{name}} login --host https://gitlab.example.com --scope write_repository

    docker/podman/skopeo, in ~/.docker/config.json:

        {"credHelpers": {"registry.example.com": "gltoken"}}

EXIT STATUS
    0   success, or an operation git does not need answered.
    1   failure; one line on standard error says why (git ignores the
        status and goes on with its next helper or a prompt).
    2   bad command line.
`, "{{name}}", name)
}

func dockerHelp(name string) string {
	return strings.ReplaceAll(`NAME
    {{name}} - docker credential helper that mints short-lived GitLab registry credentials

SYNOPSIS
    {{name}} get|store|erase|list|version

DESCRIPTION
    docker, podman, skopeo, buildah and crane run this helper for registries
    listed in "credHelpers" of ~/.docker/config.json. get reads the registry
    host from standard input and asks the gltoken daemon for a credential for
    the registry repositories https://<registry host>/<project> with the scope
    read_registry (plus write_registry when GLTOKEN_SCOPE names it). store
    and erase keep and revoke nothing; list prints {}.

    A registry client names only the registry host, never the image: the
    image is named later, in the registry's own token request to GitLab
    (/jwt/auth?scope=repository:<image path>:pull), for the credential the
    client already chose. So the projects come from the environment: the
    job's own ($CI_PROJECT_PATH), GLTOKEN_REGISTRY_PROJECT, or every project
    in GLTOKEN_REGISTRY_PROJECTS. A project's images are its own path and
    those up to two levels below it (group/project/image); name projects, not
    images. For several projects the daemon's trust policy must allow each
    one, and one credential must serve them all: a group deploy token of a
    group that one rule lists in allow.groups and that holds every project.
    Anything else is refused; nothing is widened to fit.

    Without an ID token, a project, or a rule that allows the login, get
    answers "credentials not found in native keychain" (the client then goes
    on anonymously, so public images still pull) and says on standard error
    that the login was denied, and why.

    Without an ID token and outside a CI job (a person's machine), get
    answers the OAuth access token of git-credential-gltoken login as
    username oauth2; GitLab's registry honours it with the scopes
    read_registry (pull), write_registry (push), read_api or api, and the
    person's role in each project. A login without any of them is refused
    here with the login that would do.

ENVIRONMENT
    GLTOKEN_DAEMON, GLTOKEN_ID_TOKEN, GLTOKEN_ID_TOKEN_FILE, GLTOKEN_CA_FILE,
    GLTOKEN_SCOPE, GLTOKEN_DEBUG: as for git-credential-gltoken.
    GLTOKEN_REGISTRY_PROJECT  the project path; default $CI_PROJECT_PATH.
    GLTOKEN_REGISTRY_PROJECTS project paths separated by commas or spaces (at
                              most 20), one credential for all of them; not
                              together with GLTOKEN_REGISTRY_PROJECT.
    GLTOKEN_HOST              without an ID token (a person logged in with
                              git-credential-gltoken login --scope
                              read_registry): the GitLab instance whose
                              access token is answered, as username oauth2;
                              default the only one logged in to.

EXAMPLES
    echo registry.example.com | {{name}} get

    In .gitlab-ci.yml, pulling images of two projects of the group platform
    (a policy rule grants allow.groups: [platform], scopes: [read_registry]):

        variables:
          GLTOKEN_REGISTRY_PROJECTS: platform/base-images,platform/tools
        script:
          - skopeo copy docker://registry.example.com/platform/tools:v1 oci:tools

EXIT STATUS
    0 success; 1 failure, with the message on standard output as docker expects.
`, "{{name}}", name)
}
