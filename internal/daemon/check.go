package daemon

import (
	"fmt"
	"io"
	"os"
	"strings"

	"gltoken.dev/gltoken/internal/config"
	"gltoken.dev/gltoken/internal/exchange"
	"gltoken.dev/gltoken/internal/gitlab"
	"gltoken.dev/gltoken/internal/idtoken"
	"gltoken.dev/gltoken/internal/policy"
)

// PolicyOptions are the policy load options the configuration implies.
func PolicyOptions(cfg *config.Config) policy.Options {
	return policy.Options{GitLabURL: cfg.GitLab.URL, MaxTTL: cfg.MaxTTL.D()}
}

// Check validates everything that can be validated offline, prints every
// problem to stderr and a summary to stdout, and returns the exit code.
func Check(cfgPath string, stdout, stderr io.Writer) int {
	cfg, err := config.Load(cfgPath)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	bad := false
	pol, err := policy.Load(cfg.PolicyFile, PolicyOptions(cfg))
	if err != nil {
		fmt.Fprintln(stderr, err)
		bad = true
	}
	for _, w := range pol.Warnings() {
		fmt.Fprintln(stderr, w)
	}
	if _, err := cfg.ReadToken(); err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", cfg.File, err)
		bad = true
	}
	if cfg.GitLab.CAFile != "" {
		if _, err := gitlab.LoadCAPool(cfg.GitLab.CAFile); err != nil {
			fmt.Fprintf(stderr, "%s: gitlab.ca_file: %v\n", cfg.File, err)
			bad = true
		}
	}
	if bad {
		return 1
	}
	fmt.Fprintf(stdout, "%s: ok (%d listen address(es), store %s)\n%s: ok (%d rules: %s)\n",
		cfg.File, len(cfg.Listen), cfg.Store.Driver, cfg.PolicyFile, len(pol.Rules()), strings.Join(pol.Rules(), ", "))
	return 0
}

// Explain prints the policy's decision for the claims in claimsPath ("-":
// stdin), a resource URL and scopes, and returns the exit code (0 allowed,
// 1 denied or failed, 2 usage).
func Explain(cfgPath, claimsPath, resource string, scopes []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if claimsPath == "" || resource == "" || len(scopes) == 0 {
		fmt.Fprintln(stderr, "exchanged explain: --claims, --resource and --scope are required (see exchanged --help)")
		return 2
	}
	cfg, err := config.Load(cfgPath)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	pol, err := policy.Load(cfg.PolicyFile, PolicyOptions(cfg))
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	var raw []byte
	if claimsPath == "-" {
		raw, err = io.ReadAll(io.LimitReader(stdin, 1<<20))
	} else {
		raw, err = os.ReadFile(claimsPath)
	}
	if err != nil {
		fmt.Fprintf(stderr, "exchanged explain: claims: %v\n", err)
		return 1
	}
	claims, err := idtoken.ParseClaims(raw)
	if err != nil {
		fmt.Fprintf(stderr, "exchanged explain: claims %s: %v\n", claimsPath, err)
		return 1
	}
	out, allowed, err := exchange.Explain(exchange.Config{GitLabURL: cfg.GitLab.URL, RegistryURL: cfg.GitLab.RegistryURL, MaxTTL: cfg.MaxTTL.D()},
		pol, claims, resource, scopes)
	if err != nil {
		fmt.Fprintf(stderr, "exchanged explain: %v\n", err)
		return 1
	}
	fmt.Fprint(stdout, out)
	if !allowed {
		return 1
	}
	return 0
}
