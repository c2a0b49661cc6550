// Command exchanged is gltoken's exchange daemon: it trades a GitLab CI/CD ID
// token for a short-lived, least-privileged GitLab credential under a trust
// policy, records it in a ledger and revokes it when its time is up.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
