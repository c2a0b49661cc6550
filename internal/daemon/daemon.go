// Package daemon assembles exchanged from its configuration: Build opens
// everything serving needs (policy, verifier, ledger, GitLab client, HTTP
// API) and Run serves until the context ends. Check and Explain are the
// offline commands. cmd/exchanged only parses the command line and calls these.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

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
	"gltoken.dev/gltoken/internal/svctoken"
)

// Daemon is an assembled exchanged, ready to Run.
type Daemon struct {
	cfg      *config.Config
	version  string
	log      *slog.Logger
	policy   *policy.Holder
	verifier *idtoken.Verifier
	store    ledger.Store
	reaper   *exchange.Reaper
	svc      *exchange.Service
	sweeper  *exchange.Sweeper
	jobs     *exchange.JobWatch
	webhook  atomic.Pointer[string] // the webhook's secret, "" when none
	keepers  []*svctoken.Keeper     // one per service token, in the order of cfg.TokenFiles()
	srv      *httpapi.Server
	cancel   context.CancelFunc
	ctx      context.Context
}

// NewLogger returns the daemon's JSON logger at level (debug|info|warn|error).
func NewLogger(w io.Writer, level string) *slog.Logger {
	var l slog.Level
	_ = l.UnmarshalText([]byte(level))
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: l}))
}

// OpenStore opens the ledger the configuration names.
func OpenStore(ctx context.Context, cfg *config.Config) (ledger.Store, error) {
	switch cfg.Store.Driver {
	case "postgres":
		return postgres.Open(ctx, cfg.Store.DSN)
	default:
		return sqlite.Open(ctx, cfg.Store.DSN)
	}
}

// Build opens everything the daemon serves with, in order, and reconciles
// what an earlier run of an embedded ledger left pending. The context bounds
// the daemon's background work until Run returns. On error everything opened
// so far is closed; the error names the step that failed.
func Build(ctx context.Context, cfg *config.Config, version string, log *slog.Logger) (d *Daemon, err error) {
	d = &Daemon{cfg: cfg, version: version, log: log}
	d.ctx, d.cancel = context.WithCancel(ctx)
	defer func() {
		if err != nil {
			d.close()
		}
	}()
	step := func(name string, err error) error { return fmt.Errorf("%s: %w", name, err) }

	if d.policy, err = policy.NewHolder(cfg.PolicyFile, PolicyOptions(cfg)); err != nil {
		return nil, step("policy", err)
	}
	logWarnings(log, d.policy.Current())
	if _, err := cfg.ReadTokens(); err != nil {
		return nil, step("service account token", err)
	}
	webhookSecret, err := cfg.ReadWebhookSecret()
	if err != nil {
		return nil, step("webhook secret", err)
	}
	d.webhook.Store(&webhookSecret)
	hc, err := gitlab.NewHTTPClient(cfg.GitLab.CAFile)
	if err != nil {
		return nil, step("gitlab.ca_file", err)
	}
	d.verifier, err = idtoken.New(d.ctx, idtoken.Config{
		Issuer: cfg.GitLab.Issuer, JWKSURL: cfg.GitLab.URL + "/oauth/discovery/keys", Audience: cfg.Audience, Algorithms: cfg.IDToken.Algorithms,
		Leeway: cfg.IDToken.Leeway.D(), HTTPClient: hc, Logger: log,
	})
	if err != nil {
		return nil, step("id token verifier", err)
	}
	if d.store, err = OpenStore(d.ctx, cfg); err != nil {
		return nil, step("ledger", err)
	}
	files := cfg.TokenFiles()
	var minter *gitlab.Client // set below, before anything is served or scraped
	m := metrics.New(metrics.Sources{
		ServiceTokens: func() []metrics.ServiceToken { return d.serviceTokens(minter) },
		LiveTokens:    d.store.CountActive,
		Overdue: func(ctx context.Context) (int, error) {
			// The promise: revoked by its TTL plus one reaper interval.
			return d.store.CountOverdue(ctx, time.Now().Add(-overdueGrace(cfg)))
		},
		JWKSRefreshes: d.verifier.Refreshes,
		VerifyCache:   d.verifier.CacheStats,
		PolicyRules:   func() int { return len(d.policy.Current().Rules()) },
		PolicyReloads: d.policy.Reloads,
	})
	// Each service token in force comes from its keeper, which rotates it;
	// the GitLab client reads it at each request, and sends each call with
	// the token in rotation that has the most calls left. Each token has a
	// GitLab API budget of its own: GitLab counts its limit per user.
	d.keepers = make([]*svctoken.Keeper, len(files))
	tokens := make([]gitlab.Token, len(files))
	for i := range files {
		tokens[i] = gitlab.Token{
			Secret: func() string { return d.keepers[i].Token() },
			Usable: func() bool { return d.keepers[i].Problem() == "" },
			Budget: gitlab.NewBudget(cfg.GitLab.APIBudgetPerMinute, nil),
		}
	}
	minter, err = gitlab.New(gitlab.Config{BaseURL: cfg.GitLab.URL, Tokens: tokens,
		// GitLab answered 401 to a call with token i: is it revoked?
		OnRejected: func(i int) { d.keepers[i].Recheck() },
		HTTPClient: hc, Logger: log, OnResponse: m.GitLabResponse})
	if err != nil {
		return nil, step("gitlab client", err)
	}
	seeds := cfg.InitialTokenFiles()
	for i, file := range files {
		if seeds[i] != "" {
			took, err := svctoken.TakeSeed(seeds[i], file)
			if err != nil {
				return nil, step("gitlab.initial_token_file", err)
			}
			if took {
				log.Info("service token taken from its initial token file", "from", seeds[i], "file", file)
			}
		}
		if d.keepers[i], err = newKeeper(cfg, file, minter.Account(i), d.store, log, m); err != nil {
			return nil, step("service account token", err)
		}
	}
	audit := log.With("log", "audit")
	keys, err := cfg.LoadLedgerKeys()
	if err != nil {
		return nil, step("ledger key", err)
	}
	var sealer exchange.Sealer
	if keys != nil {
		sealer = keys
	}
	svc, err := exchange.New(exchange.Config{
		Sealer:    sealer,
		GitLabURL: cfg.GitLab.URL, RegistryURL: cfg.GitLab.RegistryURL, MaxTTL: cfg.MaxTTL.D(),
		SharedStore: cfg.Store.Driver == "postgres",
		Logger:      log, Audit: audit, Observer: m,
		Limiter: httpapi.NewMintQuotas(httpapi.QuotaConfig{
			PerJobPerMinute: cfg.RateLimit.MintsPerJob, PerProjectPerMinute: cfg.RateLimit.MintsPerProject,
			RemintsAfterRevoke: cfg.RateLimit.RemintsAfterRevoke,
		}),
		// The watch is built below, with the reaper it ends jobs through.
		Jobs: jobRunning{d},
		Scheduled: func(at time.Time) {
			if d.reaper != nil {
				d.reaper.Schedule(at)
			}
		},
	}, d.verifier, d.policy.Current, minter, d.store)
	if err != nil {
		return nil, step("exchange", err)
	}
	d.svc = svc
	d.reaper = exchange.NewReaper(exchange.ReaperConfig{Interval: cfg.ReaperInterval.D(), Logger: log, Audit: audit, Observer: m, Pool: svc.Pool()}, d.store, minter, svc.Cache())
	d.jobs = exchange.NewJobWatch(exchange.JobWatchConfig{Interval: cfg.GitLab.JobPollInterval.D(), Logger: log}, d.store, d.reaper, minter)
	d.sweeper = exchange.NewSweeper(exchange.SweeperConfig{Interval: cfg.SweepInterval.D(), Logger: log, Audit: audit, Observer: m}, d.store, minter, minter)
	if cfg.Store.Driver == "sqlite" {
		// The embedded ledger belongs to this process alone: every pending
		// intent in it was left by a process that died mid-mint.
		n, err := d.reaper.ReconcilePending(d.ctx)
		if err != nil {
			return nil, step("reconcile pending intents", err)
		}
		if n > 0 {
			log.Info("reconciled intents left by an earlier run", "count", n)
		}
	}

	api := httpapi.Handler(httpapi.Options{
		Service: svc,
		Ready:   d.ready,
		Metrics: m.Handler(),
		Guard:   httpapi.NewFailureGuard(cfg.RateLimit.PerSecond, cfg.RateLimit.Burst, 0),
		Limited: m.Limited,
		Events:  d.jobs, WebhookSecret: func() string { return *d.webhook.Load() },
		Logger: log,
	})
	tlsFiles := &httpapi.TLSFiles{CertFile: cfg.TLS.CertFile, KeyFile: cfg.TLS.KeyFile, ClientCAFile: cfg.TLS.ClientCAFile}
	if d.srv, err = httpapi.Listen(cfg.Listen, tlsFiles, api, log); err != nil {
		return nil, step("listen", err)
	}
	return d, nil
}

// newKeeper builds the keeper of the service token in file. Replicas on
// PostgreSQL coordinate rotation through the store; an embedded store
// belongs to one process, which needs no coordination. Each token rotates
// by itself (the store's claims are per token).
func newKeeper(cfg *config.Config, file string, gl svctoken.GitLab, store ledger.Store, log *slog.Logger, m *metrics.Metrics) (*svctoken.Keeper, error) {
	var rs ledger.RotationStore
	if cfg.Store.Driver == "postgres" {
		rs, _ = store.(ledger.RotationStore)
	}
	r := cfg.GitLab.Rotation
	return svctoken.New(svctoken.Config{
		File: file, GitLab: gl, Store: rs, Rotate: r.On(),
		Before: r.Before.D(), Lifetime: r.Lifetime.D(), ProbeAfter: r.ProbeAfter.D(),
		Logger: log, OnEvent: func(event string) { m.ServiceTokenEvent(file, event) },
	})
}

// serviceTokens is what /metrics shows of each service token.
func (d *Daemon) serviceTokens(c *gitlab.Client) []metrics.ServiceToken {
	if c == nil {
		return nil
	}
	stats := c.TokenStats()
	out := make([]metrics.ServiceToken, len(stats))
	for i, st := range stats {
		k := d.keepers[i]
		b := st.Budget
		out[i] = metrics.ServiceToken{File: k.File(), Fingerprint: st.Fingerprint, Usable: st.Usable,
			ExpiresAt: k.ExpiresAt(), Alert: k.Alerting(),
			BudgetPerMinute: b.PerMinute, BudgetRemaining: b.Remaining, GitLabRemaining: b.GitLabRemaining,
			Sent: b.Sent, Refused: b.Refused, Paused: b.Paused}
	}
	return out
}

// jobRunning asks the daemon's job watch, which is built after the
// exchange service that asks it.
type jobRunning struct{ d *Daemon }

func (j jobRunning) Running(ctx context.Context, projectID, jobID string) (bool, string, error) {
	return j.d.jobs.Running(ctx, projectID, jobID)
}

// overdueGrace is how long past its TTL a credential may stay before it
// counts as overdue: one reaper interval (default 10s).
func overdueGrace(cfg *config.Config) time.Duration {
	if d := cfg.ReaperInterval.D(); d > 0 {
		return d
	}
	return 10 * time.Second
}

// ready is /readyz: the keys are loaded, the ledger answers, and GitLab has
// not rejected the service token (nor found it without the api scope).
func (d *Daemon) ready(ctx context.Context) error {
	if !d.verifier.Ready() {
		return errors.New("GitLab's signing keys are not loaded yet")
	}
	if err := d.store.Ping(ctx); err != nil {
		return fmt.Errorf("ledger unreachable: %w", err)
	}
	// Ready while one service token can mint: calls go with the tokens in
	// rotation, and one out of rotation is the keeper's alert (its log line
	// and gltoken_service_token_usable), not a reason to take a replica
	// that still mints out of service.
	var problems []string
	for _, k := range d.keepers {
		p := k.Problem()
		if p == "" {
			return nil
		}
		problems = append(problems, k.File()+": "+p)
	}
	return errors.New(strings.Join(problems, "; "))
}

// Run serves until ctx ends (then drains for up to 20 s), runs the reaper
// and the service token's keeper, and on SIGHUP reloads the policy, the
// service token file and refreshes GitLab's keys. It closes
// the daemon when it returns.
func (d *Daemon) Run(ctx context.Context) error {
	defer d.close()
	stop := context.AfterFunc(ctx, d.cancel)
	defer stop()

	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	var wg sync.WaitGroup
	wg.Add(4 + len(d.keepers))
	go func() { defer wg.Done(); d.reaper.Run(d.ctx) }()
	go func() { defer wg.Done(); d.jobs.Run(d.ctx) }()
	go func() { defer wg.Done(); d.sweeper.Run(d.ctx) }()
	for _, k := range d.keepers {
		go func() { defer wg.Done(); k.Start(d.ctx); k.Run(d.ctx) }()
	}
	go func() { defer wg.Done(); d.onHangup(d.ctx, hup) }()

	addrs := make([]string, 0, len(d.cfg.Listen))
	for _, a := range d.srv.Addrs() {
		addrs = append(addrs, a.Network()+":"+a.String())
	}
	sort.Strings(addrs)
	d.log.Info("exchanged serving", "version", d.version, "listen", addrs, "gitlab", d.cfg.GitLab.URL,
		"store", d.cfg.Store.Driver, "rules", len(d.policy.Current().Rules()))
	err := d.srv.Serve(d.ctx, 20*time.Second)
	d.cancel()
	wg.Wait()
	return err
}

// onHangup reloads on each SIGHUP until ctx ends.
func (d *Daemon) onHangup(ctx context.Context, hup <-chan os.Signal) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			if p, err := d.policy.Reload(); err != nil {
				d.log.Error("policy reload refused; the policy in force stays", "file", d.policy.File(), "error", err.Error())
			} else {
				// Credentials cached under a rule that changed or is gone
				// are not handed out again; they live on until their TTL.
				dropped := d.svc.DropChangedRules(p)
				d.log.Info("policy reloaded", "file", d.policy.File(), "rules", len(p.Rules()), "cached_credentials_dropped", dropped)
				logWarnings(d.log, p)
			}
			for _, k := range d.keepers {
				_ = k.Reload(ctx) // a refused file is logged; the token in force stays
			}
			if d.cfg.GitLab.WebhookSecretFile != "" {
				if s, err := d.cfg.ReadWebhookSecret(); err != nil {
					d.log.Error("webhook secret reload refused; the secret in force stays", "error", err.Error())
				} else {
					d.webhook.Store(&s)
					d.log.Info("webhook secret reloaded", "file", d.cfg.GitLab.WebhookSecretFile)
				}
			}
			// An emergency key rotation at GitLab: drop removed keys now.
			if err := d.verifier.Refresh(ctx); err != nil {
				d.log.Error("JWKS refresh on SIGHUP failed; the key set in force stays", "error", err.Error())
			} else {
				d.log.Info("JWKS refreshed")
			}
		}
	}
}

func logWarnings(log *slog.Logger, p *policy.Policy) {
	for _, w := range p.Warnings() {
		log.Warn("policy", "warning", w)
	}
}

func (d *Daemon) close() {
	d.cancel()
	if d.store != nil {
		d.store.Close()
	}
}
