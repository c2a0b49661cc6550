package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/spf13/pflag"

	"gltoken.dev/gltoken/internal/config"
	"gltoken.dev/gltoken/internal/exchange"
	"gltoken.dev/gltoken/internal/gitlab"
	"gltoken.dev/gltoken/internal/httpapi"
	"gltoken.dev/gltoken/internal/idtoken"
	"gltoken.dev/gltoken/internal/ledger"
	"gltoken.dev/gltoken/internal/metrics"
	"gltoken.dev/gltoken/internal/policy"
	"gltoken.dev/gltoken/internal/postgres"
	"gltoken.dev/gltoken/internal/sqlite"
)

const usage = `NAME
    exchanged - trade GitLab CI/CD ID tokens for short-lived GitLab credentials

SYNOPSIS
    exchanged [serve] --config FILE
    exchanged check   --config FILE
    exchanged explain --config FILE --claims CLAIMS.json --resource URL --scope SCOPE[,SCOPE]
    exchanged version

DESCRIPTION
    exchanged verifies a GitLab CI/CD ID token (a JWT GitLab signs for each job)
    against the instance's JWKS, checks the trust policy, and mints the
    least-privileged GitLab credential that covers the request: a project or
    group deploy token for reads and registry access, a project access token
    only for push or API access. Every credential is written to a durable
    ledger before it is minted and revoked when its time is up, also after a
    crash. Clients speak RFC 8693 token exchange on /v1/token and RFC 7009
    revocation on /v1/revoke, over a Unix socket or TCP with TLS.

COMMANDS
    serve     Run the daemon (the default). SIGTERM or SIGINT stop it
              gracefully; SIGHUP reloads the policy file, keeping the policy
              in force when the new one is invalid (the log says why), and
              fetches GitLab's JWKS again (keys GitLab dropped stop working).
    check     Validate the configuration and the policy, naming every
              problem with its file, line and rule. Exit 0 when valid.
    explain   Print the policy's decision for the claims of an ID token (a
              JSON object, e.g. the decoded payload of a job's token), a
              resource URL and scopes: which rule matched, or for each rule
              the first check that failed. Offline: it mints nothing and
              needs neither GitLab nor the ledger.
    version   Print the version.

OPTIONS
    --config FILE      The YAML configuration (see contrib/exchanged.yaml).
    --claims FILE      explain: the ID token's claims as JSON ("-" for stdin).
    --resource URL     explain: e.g. https://gitlab.example.com/platform/lib.git
    --scope SCOPES     explain: comma- or space-separated, e.g. read_repository
    -h, --help         This text.

FILES
    /etc/gltoken/exchanged.yaml    configuration
    /etc/gltoken/policy.yaml       trust policy (policy_file)
    /etc/gltoken/gitlab-token      service account token (gitlab.token_file, mode 0600)
    /run/gltoken/exchanged.sock    default Unix socket
    /var/lib/gltoken/state.db      default embedded ledger

EXIT STATUS
    0 success (explain: allowed); 1 invalid configuration, failure, or (explain)
    denied; 2 usage error.

EXAMPLES
    exchanged check --config /etc/gltoken/exchanged.yaml
    exchanged explain --config /etc/gltoken/exchanged.yaml --claims job.json \
        --resource https://gitlab.example.com/platform/lib.git --scope read_repository
`

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cmd := "serve"
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		cmd, args = args[0], args[1:]
	}
	fs := pflag.NewFlagSet("exchanged", pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	cfgPath := fs.String("config", "/etc/gltoken/exchanged.yaml", "")
	claims := fs.String("claims", "", "")
	resource := fs.String("resource", "", "")
	scope := fs.String("scope", "", "")
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
		return check(*cfgPath, stdout, stderr)
	case "explain":
		return explain(*cfgPath, *claims, *resource, *scope, os.Stdin, stdout, stderr)
	case "version":
		fmt.Fprintln(stdout, "exchanged", version)
		return 0
	}
	fmt.Fprintf(stderr, "exchanged: unknown command %q (serve, check, explain, version; see exchanged --help)\n", cmd)
	return 2
}

// check validates everything that can be validated offline and lists every problem.
func check(cfgPath string, stdout, stderr io.Writer) int {
	cfg, err := config.Load(cfgPath)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	bad := false
	pol, err := policy.Load(cfg.PolicyFile, policy.Options{GitLabURL: cfg.GitLab.URL})
	if err != nil {
		fmt.Fprintln(stderr, err)
		bad = true
	}
	if _, err := cfg.ReadToken(); err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", cfg.File, err)
		bad = true
	}
	if cfg.GitLab.CAFile != "" {
		if _, err := loadCAPool(cfg.GitLab.CAFile); err != nil {
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

func explain(cfgPath, claimsPath, resource, scope string, stdin io.Reader, stdout, stderr io.Writer) int {
	if claimsPath == "" || resource == "" || scope == "" {
		fmt.Fprintln(stderr, "exchanged explain: --claims, --resource and --scope are required (see exchanged --help)")
		return 2
	}
	cfg, err := config.Load(cfgPath)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	pol, err := policy.Load(cfg.PolicyFile, policy.Options{GitLabURL: cfg.GitLab.URL})
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
	scopes := strings.FieldsFunc(scope, func(r rune) bool { return r == ',' || r == ' ' })
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

func newLogger(w io.Writer, level string) *slog.Logger {
	var l slog.Level
	_ = l.UnmarshalText([]byte(level))
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: l}))
}

func loadCAPool(file string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s: no PEM certificate found", file)
	}
	return pool, nil
}

func gitlabHTTPClient(cfg *config.Config) (*http.Client, error) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.ResponseHeaderTimeout = 20 * time.Second
	tr.MaxIdleConnsPerHost = 16
	if cfg.GitLab.CAFile != "" {
		pool, err := loadCAPool(cfg.GitLab.CAFile)
		if err != nil {
			return nil, fmt.Errorf("gitlab.ca_file: %w", err)
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	return &http.Client{Transport: limitBodies{tr, maxGitLabResponse}, Timeout: 30 * time.Second}, nil
}

// maxGitLabResponse bounds what is read of any one GitLab answer (a page of
// tokens is a few tens of KiB; a JWKS a few KiB).
const maxGitLabResponse = 8 << 20

// limitBodies fails the read of a response body larger than max instead of
// holding it in memory.
type limitBodies struct {
	next http.RoundTripper
	max  int64
}

func (l limitBodies) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := l.next.RoundTrip(r)
	if err == nil {
		resp.Body = &limitedBody{ReadCloser: resp.Body, left: l.max}
	}
	return resp, err
}

type limitedBody struct {
	io.ReadCloser
	left int64
}

func (b *limitedBody) Read(p []byte) (int, error) {
	if b.left <= 0 {
		return 0, fmt.Errorf("GitLab's answer is larger than %d bytes", maxGitLabResponse)
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.ReadCloser.Read(p)
	b.left -= int64(n)
	return n, err
}

func openStore(ctx context.Context, cfg *config.Config) (ledger.Store, error) {
	switch cfg.Store.Driver {
	case "postgres":
		return postgres.Open(ctx, cfg.Store.DSN)
	default:
		return sqlite.Open(ctx, cfg.Store.DSN)
	}
}

// policyHolder keeps the policy in force and swaps it on reload.
type policyHolder struct {
	p                 atomic.Pointer[policy.Policy]
	reloads, failures atomic.Uint64
	file              string
	opts              policy.Options
}

func (h *policyHolder) reload(log *slog.Logger) {
	p, err := policy.Load(h.file, h.opts)
	if err != nil {
		h.failures.Add(1)
		log.Error("policy reload refused; the policy in force stays", "file", h.file, "error", err.Error())
		return
	}
	h.p.Store(p)
	h.reloads.Add(1)
	log.Info("policy reloaded", "file", h.file, "rules", len(p.Rules()))
}

func serve(ctx context.Context, cfgPath string, stderr io.Writer) int {
	cfg, err := config.Load(cfgPath)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	log := newLogger(stderr, cfg.LogLevel)
	fail := func(msg string, err error) int {
		log.Error(msg, "error", err.Error())
		return 1
	}
	pols := &policyHolder{file: cfg.PolicyFile, opts: policy.Options{GitLabURL: cfg.GitLab.URL}}
	pol, err := policy.Load(cfg.PolicyFile, pols.opts)
	if err != nil {
		return fail("policy", err)
	}
	pols.p.Store(pol)
	token, err := cfg.ReadToken()
	if err != nil {
		return fail("service account token", err)
	}
	hc, err := gitlabHTTPClient(cfg)
	if err != nil {
		return fail("gitlab client", err)
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	verifier, err := idtoken.New(ctx, idtoken.Config{
		Issuer: cfg.GitLab.Issuer, JWKSURL: cfg.GitLab.URL + "/oauth/discovery/keys", Audience: cfg.Audience, Algorithms: cfg.IDToken.Algorithms,
		Leeway: cfg.IDToken.Leeway.D(), HTTPClient: hc, Logger: log,
	})
	if err != nil {
		return fail("id token verifier", err)
	}
	store, err := openStore(ctx, cfg)
	if err != nil {
		return fail("ledger", err)
	}
	defer store.Close()

	m := metrics.New(metrics.Sources{
		LiveTokens:    store.CountActive,
		JWKSRefreshes: verifier.Refreshes,
		PolicyRules:   func() int { return len(pols.p.Load().Rules()) },
		PolicyReloads: func() (uint64, uint64) { return pols.reloads.Load(), pols.failures.Load() },
	})
	minter, err := gitlab.New(gitlab.Config{BaseURL: cfg.GitLab.URL, Token: token, HTTPClient: hc, Logger: log, OnResponse: m.GitLabResponse})
	if err != nil {
		return fail("gitlab client", err)
	}
	audit := log.With("log", "audit")
	svc, err := exchange.New(exchange.Config{
		GitLabURL: cfg.GitLab.URL, RegistryURL: cfg.GitLab.RegistryURL, MaxTTL: cfg.MaxTTL.D(),
		SharedStore: cfg.Store.Driver == "postgres",
		Logger:      log, Audit: audit, Observer: m,
	}, verifier, pols.p.Load, minter, store)
	if err != nil {
		return fail("exchange", err)
	}
	reaper := exchange.NewReaper(exchange.ReaperConfig{Interval: cfg.ReaperInterval.D(), Logger: log, Audit: audit, Observer: m}, store, minter, svc)
	if cfg.Store.Driver == "sqlite" {
		// The embedded ledger belongs to this process alone: every pending
		// intent in it was left by a process that died mid-mint.
		n, err := reaper.ReconcilePending(ctx)
		if err != nil {
			return fail("reconcile pending intents", err)
		}
		if n > 0 {
			log.Info("reconciled intents left by an earlier run", "count", n)
		}
	}

	api := httpapi.Handler(httpapi.Options{
		Service: svc,
		Ready: func(ctx context.Context) error {
			if !verifier.Ready() {
				return errors.New("GitLab's signing keys are not loaded yet")
			}
			if err := store.Ping(ctx); err != nil {
				return fmt.Errorf("ledger unreachable: %w", err)
			}
			return nil
		},
		Metrics: m.Handler(),
		Limiter: httpapi.NewClientLimiter(cfg.RateLimit.PerSecond, cfg.RateLimit.Burst),
		Logger:  log,
	})
	srv, err := httpapi.Listen(cfg.Listen, &httpapi.TLSFiles{CertFile: cfg.TLS.CertFile, KeyFile: cfg.TLS.KeyFile, ClientCAFile: cfg.TLS.ClientCAFile}, api, log)
	if err != nil {
		return fail("listen", err)
	}

	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); reaper.Run(ctx) }()

	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				pols.reload(log)
				// An emergency key rotation at GitLab: drop removed keys now.
				if err := verifier.Refresh(ctx); err != nil {
					log.Error("JWKS refresh on SIGHUP failed; the key set in force stays", "error", err.Error())
				} else {
					log.Info("JWKS refreshed")
				}
			}
		}
	}()

	addrs := make([]string, 0, len(cfg.Listen))
	for _, a := range srv.Addrs() {
		addrs = append(addrs, a.Network()+":"+a.String())
	}
	sort.Strings(addrs)
	log.Info("exchanged serving", "version", version, "listen", addrs, "gitlab", cfg.GitLab.URL, "store", cfg.Store.Driver, "rules", len(pol.Rules()))
	err = srv.Serve(ctx, 20*time.Second)
	cancel()
	wg.Wait()
	if err != nil {
		return fail("serve", err)
	}
	log.Info("exchanged stopped")
	return 0
}
