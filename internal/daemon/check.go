package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"gltoken.dev/gltoken/internal/config"
	"gltoken.dev/gltoken/internal/exchange"
	"gltoken.dev/gltoken/internal/gitlab"
	"gltoken.dev/gltoken/internal/idtoken"
	"gltoken.dev/gltoken/internal/policy"
	"gltoken.dev/gltoken/internal/svctoken"
)

// PolicyOptions are the policy load options the configuration implies.
func PolicyOptions(cfg *config.Config) policy.Options {
	return policy.Options{GitLabURL: cfg.GitLab.URL, MaxTTL: cfg.MaxTTL.D()}
}

// Check validates everything that can be validated offline, prints every
// problem to stderr and a summary to stdout, and returns the exit code. With
// online it also asks GitLab about the service token (GET
// /personal_access_tokens/self): rejected, inactive or without the api scope
// is a problem; otherwise it prints the token's name, scopes and days left.
func Check(ctx context.Context, cfgPath string, online bool, stdout, stderr io.Writer) int {
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
	secret, err := cfg.ReadToken()
	if err != nil {
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
	var tokenLine string
	if online {
		line, err := checkServiceToken(ctx, cfg, secret)
		if err != nil {
			fmt.Fprintf(stderr, "%s: %v\n", cfg.GitLab.TokenFile, err)
			return 1
		}
		tokenLine = line
	}
	fmt.Fprintf(stdout, "%s: ok (%d listen address(es), store %s)\n%s: ok (%d rules: %s)\n",
		cfg.File, len(cfg.Listen), cfg.Store.Driver, cfg.PolicyFile, len(pol.Rules()), strings.Join(pol.Rules(), ", "))
	fmt.Fprint(stdout, tokenLine)
	return 0
}

// checkServiceToken asks GitLab about the service token and returns the
// summary line, or an error saying what is wrong with the token.
func checkServiceToken(ctx context.Context, cfg *config.Config, secret string) (string, error) {
	hc, err := gitlab.NewHTTPClient(cfg.GitLab.CAFile)
	if err != nil {
		return "", err
	}
	gl, err := gitlab.New(gitlab.Config{BaseURL: cfg.GitLab.URL, TokenSource: func() string { return secret }, HTTPClient: hc})
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	info, problem, err := svctoken.Check(ctx, gl, secret)
	switch {
	case errors.Is(err, svctoken.ErrRevoked):
		return "", fmt.Errorf("GitLab (%s) rejects the service token (401): it is invalid, expired or revoked; install a valid token (see the README: the service token's recovery)", cfg.GitLab.URL)
	case err != nil:
		return "", fmt.Errorf("could not ask GitLab (%s) about the service token: %v", cfg.GitLab.URL, err)
	case problem != "":
		return "", errors.New(problem)
	}
	expiry := "never expires"
	if days := svctoken.DaysLeft(info, time.Now()); days >= 0 {
		expiry = fmt.Sprintf("expires %s, %d day(s) left", info.ExpiresAt.Format(time.DateOnly), days)
		if days < 7 {
			expiry += " (rotate it soon, or let the daemon rotate it)"
		}
	}
	return fmt.Sprintf("%s: ok (GitLab accepts token %q, id %d, scopes %s; %s)\n",
		cfg.GitLab.TokenFile, info.Name, info.ID, strings.Join(info.Scopes, ","), expiry), nil
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
