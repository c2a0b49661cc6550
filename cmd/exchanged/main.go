// Command exchanged is gltoken's exchange daemon: it trades a GitLab CI/CD ID
// token for a short-lived, least-privileged GitLab credential under a trust
// policy, records it in a ledger and revokes it when its time is up. This
// file only reads the command line; internal/daemon does the work.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"

	"gltoken.dev/gltoken/internal/config"
	"gltoken.dev/gltoken/internal/daemon"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	cmd := "serve"
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		cmd, args = args[0], args[1:]
	}
	if cmd == "credentials" {
		return daemon.Credentials(ctx, args, stdout, stderr)
	}
	if cmd == "suggest" && !slices.Contains(args, "--help") && !slices.Contains(args, "-h") {
		return daemon.Suggest(ctx, args, time.Now, stdout, stderr)
	}
	fs := pflag.NewFlagSet("exchanged", pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	cfgPath := fs.String("config", "/etc/gltoken/exchanged.yaml", "")
	claims := fs.String("claims", "", "")
	idToken := fs.String("id-token", "", "")
	resources := fs.StringArray("resource", nil, "")
	scope := fs.String("scope", "", "")
	online := fs.Bool("online", false, "")
	projectPolicy := fs.String("project-policy", "", "")
	help := fs.BoolP("help", "h", false, "")
	if err := fs.Parse(args); err != nil {
		fmt.Fprintf(stderr, "exchanged: %v (see exchanged --help)\n", err)
		return 2
	}
	if *help || cmd == "help" {
		fmt.Fprint(stdout, usage)
		return 0
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "exchanged: unexpected argument %q (see exchanged --help)\n", fs.Arg(0))
		return 2
	}
	switch cmd {
	case "serve":
		return serve(ctx, *cfgPath, stderr)
	case "check":
		if *projectPolicy != "" {
			withCfg := ""
			if fs.Changed("config") {
				withCfg = *cfgPath
			}
			return daemon.CheckPolicy(withCfg, *projectPolicy, stdout, stderr)
		}
		return daemon.Check(ctx, *cfgPath, *online, stdout, stderr)
	case "explain":
		scopes := strings.FieldsFunc(*scope, func(r rune) bool { return r == ',' || r == ' ' })
		return daemon.Explain(*cfgPath, *claims, *idToken, *resources, scopes, stdin, stdout, stderr)
	case "version":
		fmt.Fprintln(stdout, "exchanged", version)
		return 0
	}
	fmt.Fprintf(stderr, "exchanged: unknown command %q (serve, check, explain, credentials, suggest, version; see exchanged --help)\n", cmd)
	return 2
}

func serve(ctx context.Context, cfgPath string, stderr io.Writer) int {
	cfg, err := config.Load(cfgPath)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	log := daemon.NewLogger(stderr, cfg.LogLevel)
	defer profiling(stderr)()
	d, err := daemon.Build(ctx, cfg, version, log)
	if err == nil {
		err = d.Run(ctx)
	}
	if err != nil {
		log.Error("exchanged failed", "error", err.Error())
		return 1
	}
	log.Info("exchanged stopped")
	return 0
}
