package daemon

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
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
	secrets, err := cfg.ReadTokens()
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", cfg.File, err)
		bad = true
	}
	if _, err := cfg.ReadWebhookSecret(); err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", cfg.File, err)
		bad = true
	}
	if _, err := cfg.LoadLedgerKeys(); err != nil {
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
	var tokenLines string
	if online {
		lines, ok := checkServiceTokens(ctx, cfg, secrets, stderr)
		if !ok {
			return 1
		}
		tokenLines = lines
	}
	fmt.Fprintf(stdout, "%s: ok (%d listen address(es), store %s)\n%s: ok (%d rules: %s)\n",
		cfg.File, len(cfg.Listen), cfg.Store.Driver, cfg.PolicyFile, len(pol.Rules()), strings.Join(pol.Rules(), ", "))
	fmt.Fprint(stdout, tokenLines)
	return 0
}

// checkServiceTokens asks GitLab about each service token and returns their
// summary lines; what is wrong with any goes to stderr, one line per token
// file, and makes ok false. Tokens of one GitLab user are named on stderr
// too (a warning): GitLab counts them against one rate limit.
func checkServiceTokens(ctx context.Context, cfg *config.Config, secrets []string, stderr io.Writer) (string, bool) {
	hc, err := gitlab.NewHTTPClient(cfg.GitLab.CAFile)
	if err != nil {
		fmt.Fprintf(stderr, "%s: gitlab.ca_file: %v\n", cfg.File, err)
		return "", false
	}
	gl, err := gitlab.New(gitlab.Config{BaseURL: cfg.GitLab.URL, Tokens: staticTokens(secrets), HTTPClient: hc})
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", cfg.File, err)
		return "", false
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	files := cfg.TokenFiles()
	var b strings.Builder
	ok := true
	byUser := map[int64]string{}
	for i, secret := range secrets {
		info, line, err := checkServiceToken(ctx, cfg, gl.Account(i), secret)
		if err != nil {
			fmt.Fprintf(stderr, "%s: %v\n", files[i], err)
			ok = false
			continue
		}
		fmt.Fprintf(&b, "%s: %s\n", files[i], line)
		if first, same := byUser[info.UserID]; same && info.UserID != 0 {
			fmt.Fprintf(stderr, "%s: warning: this token and %s's belong to one GitLab user (id %d): GitLab counts their calls against one rate limit, so it adds no quota (use another service account's token)\n",
				files[i], first, info.UserID)
		} else {
			byUser[info.UserID] = files[i]
		}
	}
	return b.String(), ok
}

// checkServiceToken asks GitLab about one service token and returns what
// GitLab said and the summary, or an error saying what is wrong with it.
func checkServiceToken(ctx context.Context, cfg *config.Config, gl svctoken.GitLab, secret string) (svctoken.Info, string, error) {
	info, problem, err := svctoken.Check(ctx, gl, secret)
	switch {
	case errors.Is(err, svctoken.ErrRevoked):
		return info, "", fmt.Errorf("GitLab (%s) rejects the service token (401): it is invalid, expired or revoked; install a valid token (see the README: the service token's recovery)", cfg.GitLab.URL)
	case err != nil:
		return info, "", fmt.Errorf("could not ask GitLab (%s) about the service token: %v", cfg.GitLab.URL, err)
	case problem != "":
		return info, "", errors.New(problem)
	}
	expiry := "never expires"
	if days := svctoken.DaysLeft(info, time.Now()); days >= 0 {
		expiry = fmt.Sprintf("expires %s, %d day(s) left", info.ExpiresAt.Format(time.DateOnly), days)
		if days < 7 {
			expiry += " (rotate it soon, or let the daemon rotate it)"
		}
	}
	return info, fmt.Sprintf("ok (GitLab accepts token %q, id %d, user id %d, scopes %s; %s)",
		info.Name, info.ID, info.UserID, strings.Join(info.Scopes, ","), expiry), nil
}

// Explain prints the policy's decision for the claims in claimsPath, or
// those of the raw ID token in idTokenPath (decoded, never verified), ("-":
// stdin), resource URLs (several: registry repositories for one credential)
// and scopes, and returns the exit code (0 allowed, 1 denied or failed, 2
// usage).
func Explain(cfgPath, claimsPath, idTokenPath string, resources []string, scopes []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if (claimsPath == "") == (idTokenPath == "") || len(resources) == 0 || len(scopes) == 0 {
		fmt.Fprintln(stderr, "exchanged explain: --resource, --scope and one of --claims or --id-token are required (see exchanged --help)")
		return 2
	}
	what, path := "claims", claimsPath
	if idTokenPath != "" {
		what, path = "id token", idTokenPath
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
	if path == "-" {
		raw, err = io.ReadAll(io.LimitReader(stdin, 1<<20))
	} else {
		raw, err = os.ReadFile(path)
	}
	if err != nil {
		fmt.Fprintf(stderr, "exchanged explain: %s: %v\n", what, err)
		return 1
	}
	if idTokenPath != "" {
		if raw, err = jwtPayload(raw); err != nil {
			fmt.Fprintf(stderr, "exchanged explain: id token %s: %v\n", idTokenPath, err)
			return 1
		}
	}
	claims, err := idtoken.ParseClaims(raw)
	if err != nil {
		fmt.Fprintf(stderr, "exchanged explain: %s %s: %v\n", what, path, err)
		return 1
	}
	if idTokenPath != "" {
		fmt.Fprintln(stdout, "claims:    decoded from the ID token WITHOUT verification (signature, issuer, audience and expiry")
		fmt.Fprintln(stdout, "           are not checked: the daemon checks them on a real exchange)")
		var times struct {
			Exp json.Number `json:"exp"`
		}
		_ = json.Unmarshal(raw, &times)
		if exp, err := strconv.ParseInt(times.Exp.String(), 10, 64); err == nil && time.Unix(exp, 0).Before(time.Now()) {
			fmt.Fprintf(stdout, "note:      this ID token expired at %s: the daemon would refuse it\n", time.Unix(exp, 0).UTC().Format(time.RFC3339))
		}
	}
	out, allowed, err := exchange.Explain(exchange.Config{GitLabURL: cfg.GitLab.URL, RegistryURL: cfg.GitLab.RegistryURL, MaxTTL: cfg.MaxTTL.D()},
		pol, claims, resources, scopes)
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

// jwtPayload returns the decoded payload of a compact JWS (header.payload.
// signature), without verifying anything. It never echoes the token.
func jwtPayload(raw []byte) ([]byte, error) {
	parts := strings.Split(strings.TrimSpace(string(raw)), ".")
	if len(parts) != 3 {
		return nil, fmt.Errorf("not a JWT (want three dot-separated parts, got %d); for a JSON object of claims use --claims", len(parts))
	}
	payload, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(parts[1], "="))
	if err != nil {
		return nil, fmt.Errorf("the payload is not base64url: %v", err)
	}
	return payload, nil
}
