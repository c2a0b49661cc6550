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
	// ServiceTokenExpiry is the service token's expiry (zero: unknown or never).
	ServiceTokenExpiry func() time.Time
	// GitLabBudget reports the GitLab API budget: its size per minute, what
	// is left, and the calls it sent, refused (spent) and held back because
	// GitLab said its own limit was reached.
	GitLabBudget func() (perMinute, remaining int, sent, refused, paused uint64)
	// ServiceTokenAlert reports an alert on the service token (a lost
	// rotation answer, a token GitLab rejects, a token not on disk).
	ServiceTokenAlert func() bool
}

// DefaultCountTTL is how long a ledger count is reused by scrapes.
const DefaultCountTTL = 10 * time.Second

// New registers every collector.
func New(src Sources) *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry()}
	m.exchanges = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "gltoken_exchanges_total", Help: "Token exchanges by outcome (granted or the RFC 6749 error code) and credential kind.",
	}, []string{"outcome", "kind"})
	m.latency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "gltoken_exchange_duration_seconds", Help: "Time to answer a token exchange.",
		Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
	}, []string{"outcome"})
	m.mints = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "gltoken_mints_total", Help: "Credentials minted in GitLab, by kind.",
	}, []string{"kind"})
	m.revocations = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "gltoken_revocations_total", Help: "Revocations by kind and outcome (revoked, client, job_ended, reconciled_revoked, abandoned, failed, unconfirmed, escaped, deferred; access-token pool slots: pool_rotated, pool_adopted, pool_gone, pool_revoked).",
	}, []string{"kind", "outcome"})
	m.gitlabCalls = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "gltoken_gitlab_requests_total", Help: "Calls to GitLab's API by route template and HTTP status (0: no answer).",
	}, []string{"route", "status"})
	m.limited = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "gltoken_rate_limited_total", Help: "Requests answered 429, by reason (peer_failures, job_mints, project_mints, gitlab_budget, gitlab, …).",
	}, []string{"reason"})
	m.rotations = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "gltoken_service_token_rotations_total",
		Help: "Service token self-rotation events: rotated, adopted (from another replica), refused, lost (alert), revoked (alert), not_writable, persist_failed, not_rotated, publish_failed.",
	}, []string{"outcome"})
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
	if src.ServiceTokenExpiry != nil {
		m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "gltoken_service_token_expiry_timestamp_seconds", Help: "When the service token expires (unix seconds; 0: unknown or never).",
		}, func() float64 {
			if t := src.ServiceTokenExpiry(); !t.IsZero() {
				return float64(t.Unix())
			}
			return 0
		}))
	}
	if src.GitLabBudget != nil {
		m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "gltoken_gitlab_budget_per_minute", Help: "The daemon's GitLab API budget: calls per minute (gitlab.api_budget_per_minute).",
		}, func() float64 { n, _, _, _, _ := src.GitLabBudget(); return float64(n) }))
		m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "gltoken_gitlab_budget_remaining", Help: "GitLab API calls the budget has left now (it refills continuously).",
		}, func() float64 { _, n, _, _, _ := src.GitLabBudget(); return float64(n) }))
		for _, o := range []string{"sent", "budget_spent", "gitlab_limited"} {
			m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
				Name: "gltoken_gitlab_budget_requests_total", ConstLabels: prometheus.Labels{"outcome": o},
				Help: "GitLab API calls by the budget's decision: sent, budget_spent (kept back: the budget is spent), gitlab_limited (kept back: GitLab answered RateLimit-Remaining 0 or 429).",
			}, func() float64 {
				_, _, sent, refused, paused := src.GitLabBudget()
				switch o {
				case "sent":
					return float64(sent)
				case "budget_spent":
					return float64(refused)
				}
				return float64(paused)
			}))
		}
	}
	if src.ServiceTokenAlert != nil {
		m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "gltoken_service_token_alert",
			Help: "1 when the service token needs an operator: a rotation's answer was lost, GitLab rejects the token, or a rotated token is not on disk (see the README's recovery steps).",
		}, func() float64 {
			if src.ServiceTokenAlert() {
				return 1
			}
			return 0
		}))
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

// ServiceTokenEvent counts one service token rotation event (svctoken.Event*).
func (m *Metrics) ServiceTokenEvent(outcome string) { m.rotations.WithLabelValues(outcome).Inc() }

// Handler serves the registry in Prometheus' text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

// Exchanged implements exchange.Observer.
func (m *Metrics) Exchanged(outcome string, kind ledger.Kind, d time.Duration) {
	m.exchanges.WithLabelValues(outcome, string(kind)).Inc()
	m.latency.WithLabelValues(outcome).Observe(d.Seconds())
}

// Minted implements exchange.Observer.
func (m *Metrics) Minted(kind ledger.Kind) { m.mints.WithLabelValues(string(kind)).Inc() }

// Revoked implements exchange.Observer.
func (m *Metrics) Revoked(kind ledger.Kind, outcome string) {
	m.revocations.WithLabelValues(string(kind), outcome).Inc()
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
