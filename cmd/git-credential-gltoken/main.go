// Command git-credential-gltoken is a git credential helper that answers git
// with short-lived GitLab credentials: in a CI job, minted by the gltoken
// daemon (exchanged) for the job's ID token; on a developer's machine, the
// OAuth access token of `git-credential-gltoken login`. Installed (or linked)
// under a name starting with docker-credential-, it is a docker credential
// helper for the GitLab container registry instead. See --help; the program
// is internal/credhelper.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"gltoken.dev/gltoken/internal/credhelper"
)

// version is set at build time: -ldflags "-X main.version=v1.2.3".
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := credhelper.Run(ctx, version, os.Args, os.Getenv, os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
