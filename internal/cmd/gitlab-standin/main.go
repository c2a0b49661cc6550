// Command gitlab-standin runs the GitLab stand-in (internal/gitlabfake) for the demo and for
// manual use. It is a test tool: never deploy it, never point real credentials at it.
//
//	gitlab-standin --state-dir DIR [--listen-file PATH] [--project group/proj ...] [--group group ...]
//	               [--user NAME ...] [--service-user NAME] [--host NAME] [-v]
//
// It listens on a loopback port, creates the projects (with a README on main), a service user
// with Maintainer rights on them (Owner on each --group) and a personal access token (scope api)
// for that user, optional human users (Developer on every project), and writes
//
//	DIR/url            the base URL (plain http, loopback; https://HOST with --host; also the ID-token issuer)
//	DIR/service-token  the service user's PAT (mode 0600)
//	PATH               the URL again, if --listen-file is given (written last: wait for it)
//
// With --host gitlab.example.com the stand-in is GitLab at https://gitlab.example.com (what go
// needs: a module path has no port). It serves TLS under a CA of its own and runs a CONNECT proxy
// that takes that host's port 443 to it, and also writes
//
//	DIR/ca.pem         the CA, for SSL_CERT_FILE (go, exchanged: gitlab.ca_file) and GIT_SSL_CAINFO (git)
//	DIR/proxy          the proxy's URL, for https_proxy
//
//	export https_proxy=$(cat DIR/proxy) SSL_CERT_FILE=DIR/ca.pem GIT_SSL_CAINFO=DIR/ca.pem
//	curl "https://gitlab.example.com/platform/app?go-get=1"   # GitLab's go-import answer
//
// The stand-in-only routes below are then under $(cat DIR/url) too, through the proxy.
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
	verbose := fs.BoolP("verbose", "v", false, "log every request (method, path, status) to stderr")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: gitlab-standin --state-dir DIR [--listen-file PATH] [--project PATH ...] [--group PATH ...] [--user NAME ...] [--service-user NAME] [--host NAME] [-v]")
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
	if err := os.MkdirAll(*stateDir, 0o700); err != nil {
		fmt.Fprintf(stderr, "gitlab-standin: %v\n", err)
		return 1
	}
	opts := gitlabfake.Options{RepoRoot: filepath.Join(*stateDir, "repos"), Host: *host}
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

	if err := writeFile(filepath.Join(*stateDir, "service-token"), pat+"\n", 0o600); err != nil {
		fmt.Fprintf(stderr, "gitlab-standin: %v\n", err)
		return 1
	}
	if *host != "" {
		if err := writeFile(filepath.Join(*stateDir, "ca.pem"), string(s.CACertPEM()), 0o644); err != nil {
			fmt.Fprintf(stderr, "gitlab-standin: %v\n", err)
			return 1
		}
		if err := writeFile(filepath.Join(*stateDir, "proxy"), s.ProxyURL()+"\n", 0o644); err != nil {
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
