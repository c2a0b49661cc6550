// Package metrics exposes exchanged's Prometheus metrics. Metrics implements
// exchange.Observer and the GitLab adapter's response hook; Handler serves
// them. No label ever carries a secret, a token id or a project id: labels
// are outcomes, kinds, routes and status codes.
package metrics

import (
	"context"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/singleflight"

	"gltoken.dev/gltoken/internal/exchange"
	"gltoken.dev/gltoken/internal/ledger"
)

// Metrics holds the daemon's collectors in a registry of its own.
type Metrics struct {
	reg         *prometheus.Registry
	exchanges   *prometheus.CounterVec
	latency     *prometheus.HistogramVec
	mints       *prometheus.CounterVec
	revocations *prometheus.CounterVec
	gitlabCalls *prometheus.CounterVec
	limited     *prometheus.CounterVec
	rotations   *prometheus.CounterVec
}

// Sources are read at scrape time.
type Sources struct {
	// LiveTokens counts in the ledger. A scrape reads it at most once per
	// CountTTL (concurrent scrapes share one read), so /metrics cannot be
	// used to load the store.
	LiveTokens func(ctx context.Context) (int, error)
	// Overdue counts the ledger's records past their TTL (by more than the
	// reaper's promise) that are not known to be gone from GitLab: each is an
	// incident (contrib/prometheus/gltoken-alerts.yaml). Read like LiveTokens.
	Overdue       func(ctx context.Context) (int, error)
	JWKSRefreshes func() (ok, failed uint64)
	// VerifyCache: ID-token verifications answered from the cache of
	// verified tokens, and those that were not.
	VerifyCache   func() (hits, misses uint64)
	PolicyRules   func() int
	PolicyReloads func() (ok, failed uint64)

	CountTTL time.Duration    // default DefaultCountTTL
	Now      func() time.Time // default time.Now
	// ServiceTokens reports each service token (gitlab.token_file, or each
	// of gitlab.token_files): its GitLab API budget and its state.
	ServiceTokens func() []ServiceToken
}

// ServiceToken is what /metrics shows of one service token. Its series are
// labelled by the token's file (token_file) and the fingerprint of the token
// in force (token, "sha256:" and 16 hex digits; it changes when the token
// rotates), never by the secret.
type ServiceToken struct {
	File, Fingerprint string
	// Usable: in rotation (GitLab has not rejected it, it has the api scope).
	Usable bool
	// ExpiresAt is its expiry (zero: unknown or never); Alert, whether it
	// needs an operator (a lost rotation answer, GitLab rejects it, a
	// rotated token not on disk).
	ExpiresAt time.Time
	Alert     bool
	// Its GitLab API budget: size a minute, what is left, and GitLab's own
	// RateLimit-Remaining for the token's user (-1: GitLab has not said).
	BudgetPerMinute, BudgetRemaining, GitLabRemaining int
	// Calls the budget sent, refused (spent), and held back because GitLab
	// said its limit was reached.
	Sent, Refused, Paused uint64
}

// DefaultCountTTL is how long a ledger count is reused by scrapes.
const DefaultCountTTL = 10 * time.Second

// New registers every collector.
func New(src Sources) *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry()}
	m.exchanges = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "gltoken_exchanges_total", Help: "Token exchanges by outcome (" + names(exchange.ExchangeOutcomes()) + ") and credential kind.",
	}, []string{"outcome", "kind"})
	m.latency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "gltoken_exchange_duration_seconds", Help: "Time to answer a token exchange.",
		Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
	}, []string{"outcome"})
	m.mints = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "gltoken_mints_total", Help: "Credentials minted in GitLab, by kind.",
	}, []string{"kind"})
	m.revocations = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "gltoken_revocations_total", Help: "Revocations by kind and outcome (" + names(exchange.RevocationOutcomes()) + ").",
	}, []string{"kind", "outcome"})
	m.gitlabCalls = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "gltoken_gitlab_requests_total", Help: "Calls to GitLab's API by route template and HTTP status (0: no answer).",
	}, []string{"route", "status"})
	m.limited = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "gltoken_rate_limited_total", Help: "Requests answered 429, by reason (peer_failures, job_mints, project_mints, remints_after_revoke, gitlab_budget, gitlab, service).",
	}, []string{"reason"})
	m.rotations = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "gltoken_service_token_rotations_total",
		Help: "Service token self-rotation events by token file: rotated, adopted (from another replica), refused, lost (alert), revoked (alert), not_writable, persist_failed, not_rotated, publish_failed.",
	}, []string{"token_file", "outcome"})
	m.reg.MustRegister(m.exchanges, m.latency, m.mints, m.revocations, m.gitlabCalls, m.limited, m.rotations,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if src.LiveTokens != nil {
		live := &cachedCount{count: src.LiveTokens, ttl: src.CountTTL, now: src.Now}
		if live.ttl <= 0 {
			live.ttl = DefaultCountTTL
		}
		if live.now == nil {
			live.now = time.Now
		}
		m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "gltoken_live_tokens", Help: "Credentials minted and not yet revoked, per the ledger, read at most every 10s (-1: ledger unreachable).",
		}, live.get))
	}
	if src.Overdue != nil {
		overdue := &cachedCount{count: src.Overdue, ttl: src.CountTTL, now: src.Now}
		if overdue.ttl <= 0 {
			overdue.ttl = DefaultCountTTL
		}
		if overdue.now == nil {
			overdue.now = time.Now
		}
		m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "gltoken_credentials_overdue",
			Help: "Credentials past their TTL by more than one reaper interval that are not known to be gone from GitLab, per the ledger, read at most every 10s (-1: ledger unreachable). Anything above 0 is an incident.",
		}, overdue.get))
	}
	if src.JWKSRefreshes != nil {
		m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "gltoken_jwks_refreshes_total", Help: "Successful JWKS fetches from GitLab.",
		}, func() float64 { ok, _ := src.JWKSRefreshes(); return float64(ok) }))
		m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "gltoken_jwks_refresh_failures_total", Help: "Failed JWKS fetches from GitLab (the last good key set stays in use).",
		}, func() float64 { _, failed := src.JWKSRefreshes(); return float64(failed) }))
	}
	if src.VerifyCache != nil {
		m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "gltoken_id_token_cache_hits_total", Help: "ID tokens answered from the cache of tokens already verified (no signature check).",
		}, func() float64 { h, _ := src.VerifyCache(); return float64(h) }))
		m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "gltoken_id_token_cache_misses_total", Help: "ID tokens verified in full (not in the cache).",
		}, func() float64 { _, m := src.VerifyCache(); return float64(m) }))
	}
	if src.PolicyRules != nil {
		m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "gltoken_policy_rules", Help: "Rules in the policy in force.",
		}, func() float64 { return float64(src.PolicyRules()) }))
	}
	if src.PolicyReloads != nil {
		m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "gltoken_policy_reloads_total", Help: "Policy reloads that took effect.",
		}, func() float64 { ok, _ := src.PolicyReloads(); return float64(ok) }))
		m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "gltoken_policy_reload_failures_total", Help: "Policy reloads refused (the old policy stays in force).",
		}, func() float64 { _, failed := src.PolicyReloads(); return float64(failed) }))
	}
	if src.ServiceTokens != nil {
		m.reg.MustRegister(serviceTokens(src.ServiceTokens))
	}
	return m
}

// cachedCount reads a ledger count at most once per ttl; concurrent
// scrapes share one read.
type cachedCount struct {
	count  func(ctx context.Context) (int, error)
	ttl    time.Duration
	now    func() time.Time
	flight singleflight.Group
	mu     sync.Mutex
	at     time.Time
	value  float64
	read   bool
}

func (c *cachedCount) get() float64 {
	now := c.now()
	c.mu.Lock()
	if c.read && now.Sub(c.at) < c.ttl && !now.Before(c.at) {
		v := c.value
		c.mu.Unlock()
		return v
	}
	c.mu.Unlock()
	v, _, _ := c.flight.Do("", func() (any, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		v := -1.0
		if n, err := c.count(ctx); err == nil {
			v = float64(n)
		}
		c.mu.Lock()
		c.at, c.value, c.read = now, v, true
		c.mu.Unlock()
		return v, nil
	})
	return v.(float64)
}

// ServiceTokenEvent counts one rotation event (svctoken.Event*) of the
// service token in file.
func (m *Metrics) ServiceTokenEvent(file, outcome string) {
	m.rotations.WithLabelValues(file, outcome).Inc()
}

// serviceTokens collects the per-token series at scrape time: their labels
// (the fingerprint of the token in force) change when a token rotates.
type serviceTokens func() []ServiceToken

var (
	tokenLabels    = []string{"token_file", "token"}
	descBudgetSize = prometheus.NewDesc("gltoken_gitlab_budget_per_minute",
		"The daemon's GitLab API budget of each service token: calls per minute (gitlab.api_budget_per_minute).", tokenLabels, nil)
	descBudgetLeft = prometheus.NewDesc("gltoken_gitlab_budget_remaining",
		"GitLab API calls the token's budget has left now (it refills continuously).", tokenLabels, nil)
	descGitLabLeft = prometheus.NewDesc("gltoken_gitlab_ratelimit_remaining",
		"GitLab's RateLimit-Remaining for the token's user, less the calls sent since, until its RateLimit-Reset; -1 when GitLab has not said (it sends it only when it throttles, unless rate_limiting_headers_for_unthrottled_requests is on).", tokenLabels, nil)
	descBudgetCalls = prometheus.NewDesc("gltoken_gitlab_budget_requests_total",
		"GitLab API calls by the token's budget's decision: sent, budget_spent (kept back: the budget is spent), gitlab_limited (kept back: GitLab answered RateLimit-Remaining 0 or 429).", append(tokenLabels, "outcome"), nil)
	descUsable = prometheus.NewDesc("gltoken_service_token_usable",
		"1 while the service token is in rotation; 0 when GitLab rejects it (revoked, expired) or it lacks the api scope, so no call goes with it.", tokenLabels, nil)
	descExpiry = prometheus.NewDesc("gltoken_service_token_expiry_timestamp_seconds",
		"When the service token expires (unix seconds; 0: unknown or never).", tokenLabels, nil)
	descAlert = prometheus.NewDesc("gltoken_service_token_alert",
		"1 when the service token needs an operator: a rotation's answer was lost, GitLab rejects the token, or a rotated token is not on disk (see the README's recovery steps).", tokenLabels, nil)
)

func (serviceTokens) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descBudgetSize, descBudgetLeft, descGitLabLeft, descBudgetCalls, descUsable, descExpiry, descAlert} {
		ch <- d
	}
}

func (f serviceTokens) Collect(ch chan<- prometheus.Metric) {
	b2f := func(b bool) float64 {
		if b {
			return 1
		}
		return 0
	}
	for _, t := range f() {
		l := []string{t.File, t.Fingerprint}
		ch <- prometheus.MustNewConstMetric(descBudgetSize, prometheus.GaugeValue, float64(t.BudgetPerMinute), l...)
		ch <- prometheus.MustNewConstMetric(descBudgetLeft, prometheus.GaugeValue, float64(t.BudgetRemaining), l...)
		ch <- prometheus.MustNewConstMetric(descGitLabLeft, prometheus.GaugeValue, float64(t.GitLabRemaining), l...)
		for _, c := range []struct {
			outcome string
			n       uint64
		}{{"sent", t.Sent}, {"budget_spent", t.Refused}, {"gitlab_limited", t.Paused}} {
			ch <- prometheus.MustNewConstMetric(descBudgetCalls, prometheus.CounterValue, float64(c.n), append(l, c.outcome)...)
		}
		ch <- prometheus.MustNewConstMetric(descUsable, prometheus.GaugeValue, b2f(t.Usable), l...)
		exp := 0.0
		if !t.ExpiresAt.IsZero() {
			exp = float64(t.ExpiresAt.Unix())
		}
		ch <- prometheus.MustNewConstMetric(descExpiry, prometheus.GaugeValue, exp, l...)
		ch <- prometheus.MustNewConstMetric(descAlert, prometheus.GaugeValue, b2f(t.Alert), l...)
	}
}

// Handler serves the registry in Prometheus' text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

// Exchanged implements exchange.Observer.
func (m *Metrics) Exchanged(outcome exchange.Outcome, kind ledger.Kind, d time.Duration) {
	m.exchanges.WithLabelValues(outcome.String(), string(kind)).Inc()
	m.latency.WithLabelValues(outcome.String()).Observe(d.Seconds())
}

// Minted implements exchange.Observer.
func (m *Metrics) Minted(kind ledger.Kind) { m.mints.WithLabelValues(string(kind)).Inc() }

// Revoked implements exchange.Observer.
func (m *Metrics) Revoked(kind ledger.Kind, outcome exchange.Outcome) {
	m.revocations.WithLabelValues(string(kind), outcome.String()).Inc()
}

var _ exchange.Observer = (*Metrics)(nil)

// names lists outcomes for a Help text: the label values are exactly the set.
func names(os []exchange.Outcome) string {
	s := make([]string, len(os))
	for i, o := range os {
		s[i] = o.String()
	}
	return strings.Join(s, ", ")
}

// Limited counts one request answered 429 for reason.
func (m *Metrics) Limited(reason string) { m.limited.WithLabelValues(reason).Inc() }

// GitLabResponse counts one call to GitLab; route is a template, never an id.
func (m *Metrics) GitLabResponse(method, route string, status int) {
	if !strings.HasPrefix(route, method+" ") {
		route = method + " " + route
	}
	m.gitlabCalls.WithLabelValues(route, strconv.Itoa(status)).Inc()
}
