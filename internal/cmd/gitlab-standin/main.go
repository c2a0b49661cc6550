// Command gitlab-standin runs the GitLab stand-in (internal/gitlabfake) for the demo and for
// manual use. It is a test tool: never deploy it, never point real credentials at it.
//
//	gitlab-standin --state-dir DIR [--listen-file PATH] [--project group/proj ...] [--group group ...]
//	               [--user NAME ...] [--service-user NAME] [--host NAME | --tls] [-v]
//
// It listens on a loopback port, creates the projects (with a README on main), a service user
// with Maintainer rights on them (Owner on each --group) and a personal access token (scope api)
// for that user, optional human users (Developer on every project), and writes
//
//	DIR/url                 the base URL (plain http, loopback; https://HOST with --host,
//	                        https://127.0.0.1:PORT with --tls); also the ID-token issuer and,
//	                        with /jwt/auth, the container registry's token realm
//	DIR/service-token       the service user's PAT (mode 0600)
//	DIR/registry-token.pem  the certificate of the key that signs registry tokens, for a real
//	                        docker-registry's auth.token.rootcertbundle (issuer gitlab-issuer,
//	                        service container_registry)
//	PATH                    the URL again, if --listen-file is given (written last: wait for it)
//
// With --host gitlab.example.com the stand-in is GitLab at https://gitlab.example.com (what go
// needs: a module path has no port). It serves TLS under a CA of its own and runs a CONNECT proxy
// that takes that host's port 443 to it, and also writes
//
//	DIR/ca.pem         the CA, for SSL_CERT_FILE (go, exchanged: gitlab.ca_file) and GIT_SSL_CAINFO (git)
//	DIR/proxy          the proxy's URL, for https_proxy
//	DIR/certs/ca.crt   the CA again, in a directory for skopeo's and podman's --cert-dir
//	DIR/tls-cert.pem, DIR/tls-key.pem (0600)
//	                   the server certificate and key (they name 127.0.0.1 and localhost too),
//	                   which a registry next to the stand-in may serve https with
//
//	export https_proxy=$(cat DIR/proxy) SSL_CERT_FILE=DIR/ca.pem GIT_SSL_CAINFO=DIR/ca.pem
//	curl "https://gitlab.example.com/platform/app?go-get=1"   # GitLab's go-import answer
//
// The stand-in-only routes below are then under $(cat DIR/url) too, through the proxy.
//
// With --tls instead the stand-in serves https on its loopback port (no host name, no proxy),
// under a CA of its own, and writes the same ca.pem, certs/ca.crt, tls-cert.pem and tls-key.pem:
// enough for clients that take a port, such as registry clients fetching tokens from the
// realm, which GitLab serves over https. A run with neither removes them.
//
// Scripts get CI/CD ID tokens from the stand-in-only route (answered to loopback clients only;
// GitLab has no such route):
//
//	curl "$(cat DIR/url)/-/standin/id_token?project=platform/app&ref=main&aud=https://gltoken.example.com"
//
// Parameters: project, ref, ref_type (branch|tag), ref_protected (true|false), aud (repeatable),
// user, environment, environment_protected, deployment_tier, pipeline_source, runner_environment,
// timeout (seconds; default 3600, GitLab's default job timeout). The answer is the token as
// text/plain. Projects can be added while it runs (users named are created):
//
//	curl -d path=team/new-app -d maintainer=gltoken-service -d developer=alice "$(cat DIR/url)/-/standin/projects"
//
// State lives in memory; repositories live in DIR/repos. SIGINT or SIGTERM stops it.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/spf13/pflag"

	"gltoken.dev/gltoken/internal/gitlabfake"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

func run(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) int {
	fs := pflag.NewFlagSet("gitlab-standin", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	listenFile := fs.String("listen-file", "", "write the base URL to this file once serving")
	stateDir := fs.String("state-dir", "", "directory for url, service-token and repos (required)")
	projects := fs.StringArray("project", nil, "project to create, e.g. platform/app (repeatable)")
	groups := fs.StringArray("group", nil, "group on which the service user is Owner (for group deploy/access tokens; repeatable)")
	users := fs.StringArray("user", nil, "human user with Developer on every --project, for ID tokens (?user=NAME; repeatable)")
	serviceUser := fs.String("service-user", "gltoken-service", "user that gets Maintainer on every --project and a PAT")
	host := fs.String("host", "", "serve as GitLab at https://HOST (TLS under a CA of its own, reached through a CONNECT proxy; writes DIR/ca.pem and DIR/proxy)")
	useTLS := fs.Bool("tls", false, "serve https on the loopback port under a CA of its own (writes DIR/ca.pem, DIR/certs/ca.crt, DIR/tls-cert.pem, DIR/tls-key.pem)")
	verbose := fs.BoolP("verbose", "v", false, "log every request (method, path, status) to stderr")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: gitlab-standin --state-dir DIR [--listen-file PATH] [--project PATH ...] [--group PATH ...] [--user NAME ...] [--service-user NAME] [--host NAME | --tls] [-v]")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return 0
		}
		return 2
	}
	if *stateDir == "" {
		fmt.Fprintln(stderr, "gitlab-standin: --state-dir is required")
		return 2
	}
	if *host != "" && *useTLS {
		fmt.Fprintln(stderr, "gitlab-standin: --host already serves https; --tls is for the loopback URL without a host name")
		return 2
	}
	if err := os.MkdirAll(*stateDir, 0o700); err != nil {
		fmt.Fprintf(stderr, "gitlab-standin: %v\n", err)
		return 1
	}
	opts := gitlabfake.Options{RepoRoot: filepath.Join(*stateDir, "repos"), Host: *host, TLS: *useTLS}
	if *verbose {
		opts.Logf = func(format string, a ...any) { fmt.Fprintf(stderr, format+"\n", a...) }
	}
	s, err := gitlabfake.New(opts)
	if err != nil {
		fmt.Fprintf(stderr, "gitlab-standin: %v\n", err)
		return 1
	}
	defer s.Close()

	svc := s.AddUser(*serviceUser)
	for _, g := range *groups {
		s.AddGroup(g)
		s.AddMember(svc, g, gitlabfake.Owner)
	}
	for _, p := range *projects {
		s.AddProject(p)
		s.AddMember(svc, p, gitlabfake.Maintainer)
	}
	for _, name := range *users {
		u := s.AddUser(name)
		for _, p := range *projects {
			s.AddMember(u, p, gitlabfake.Developer)
		}
	}
	pat := s.CreatePersonalAccessToken(svc, "gltoken-service", []string{"api"}, nil)

	files := []stateFile{
		{"service-token", []byte(pat + "\n"), 0o600},
		{"registry-token.pem", s.RegistryCertPEM(), 0o644},
	}
	if s.CACertPEM() != nil {
		cert, key := s.ServerCertPEM()
		files = append(files, stateFile{"ca.pem", s.CACertPEM(), 0o644}, stateFile{"certs/ca.crt", s.CACertPEM(), 0o644},
			stateFile{"tls-cert.pem", cert, 0o644}, stateFile{"tls-key.pem", key, 0o600})
		if err := os.MkdirAll(filepath.Join(*stateDir, "certs"), 0o755); err != nil {
			fmt.Fprintf(stderr, "gitlab-standin: %v\n", err)
			return 1
		}
	}
	if s.ProxyURL() != "" {
		files = append(files, stateFile{"proxy", []byte(s.ProxyURL() + "\n"), 0o644})
	}
	written := map[string]bool{}
	for _, f := range files {
		written[f.name] = true
	}
	// What an earlier run wrote and this one does not: a CA must not be trusted for a
	// stand-in that did not make it.
	for _, name := range []string{"ca.pem", "certs/ca.crt", "tls-cert.pem", "tls-key.pem", "proxy"} {
		if written[name] {
			continue
		}
		if err := os.Remove(filepath.Join(*stateDir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			fmt.Fprintf(stderr, "gitlab-standin: %v\n", err)
			return 1
		}
	}
	for _, f := range files {
		if err := writeFile(filepath.Join(*stateDir, f.name), string(f.content), f.mode); err != nil {
			fmt.Fprintf(stderr, "gitlab-standin: %v\n", err)
			return 1
		}
	}
	if err := writeFile(filepath.Join(*stateDir, "url"), s.URL()+"\n", 0o644); err != nil {
		fmt.Fprintf(stderr, "gitlab-standin: %v\n", err)
		return 1
	}
	if *listenFile != "" {
		if err := writeFile(*listenFile, s.URL()+"\n", 0o644); err != nil {
			fmt.Fprintf(stderr, "gitlab-standin: %v\n", err)
			return 1
		}
	}
	fmt.Fprintf(stdout, "gitlab-standin: serving %s (service user %s, %d projects)\n", s.URL(), *serviceUser, len(*projects))
	<-ctx.Done()
	return 0
}

// stateFile is a file run writes into the state directory.
type stateFile struct {
	name    string
	content []byte
	mode    os.FileMode
}

// writeFile writes atomically so a script polling for the file never reads half of it.
func writeFile(path, content string, mode os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), mode); err != nil {
		return err
	}
	if err := os.Chmod(tmp, mode); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
