package metrics

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"gltoken.dev/gltoken/internal/exchange"
)

// TestScrapesCannotLoadTheStore: a flood of scrapes reads the ledger count
// once per CountTTL.
func TestScrapesCannotLoadTheStore(t *testing.T) {
	var mu sync.Mutex
	reads := 0
	at := time.Date(2026, 12, 2, 8, 0, 0, 0, time.UTC)
	m := New(Sources{
		LiveTokens: func(context.Context) (int, error) {
			mu.Lock()
			defer mu.Unlock()
			reads++
			return 42, nil
		},
		Now: func() time.Time { mu.Lock(); defer mu.Unlock(); return at },
	})
	h := m.Handler()
	scrape := func() string {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/metrics", nil))
		b, _ := io.ReadAll(w.Result().Body)
		return string(b)
	}
	var wg sync.WaitGroup
	for range 100 {
		wg.Add(1)
		go func() { defer wg.Done(); scrape() }()
	}
	wg.Wait()
	if !strings.Contains(scrape(), "gltoken_live_tokens 42") {
		t.Fatal("gltoken_live_tokens missing")
	}
	if reads != 1 {
		t.Fatalf("101 scrapes read the ledger %d times, want 1", reads)
	}
	mu.Lock()
	at = at.Add(DefaultCountTTL)
	mu.Unlock()
	scrape()
	if reads != 2 {
		t.Fatalf("after the TTL: %d reads, want 2", reads)
	}
}

// TestOverdueGaugeAndAlertRules (issue 9.9): the overdue gauge is exported,
// and every metric the shipped alert rules use exists.
func TestOverdueGaugeAndAlertRules(t *testing.T) {
	m := New(Sources{
		LiveTokens: func(context.Context) (int, error) { return 1, nil },
		Overdue:    func(context.Context) (int, error) { return 3, nil },
		ServiceTokens: func() []ServiceToken {
			return []ServiceToken{{File: "/var/lib/gltoken/sa-1", Fingerprint: "sha256:0123456789abcdef"}}
		},
	})
	for _, o := range exchange.RevocationOutcomes() {
		m.Revoked("project_access_token", o)
	}
	w := httptest.NewRecorder()
	m.Handler().ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	body := w.Body.String()
	if !strings.Contains(body, "gltoken_credentials_overdue 3") {
		t.Fatalf("overdue gauge missing:\n%s", body)
	}
	rules, err := os.ReadFile("../../contrib/prometheus/gltoken-alerts.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Groups []struct {
			Rules []struct {
				Alert string `yaml:"alert"`
				Expr  string `yaml:"expr"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(rules, &doc); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, g := range doc.Groups {
		for _, r := range g.Rules {
			n++
			for _, name := range regexp.MustCompile(`gltoken_[a-z_]+`).FindAllString(r.Expr, -1) {
				if !strings.Contains(body, "\n"+name) {
					t.Errorf("alert %s uses %s, which /metrics does not export", r.Alert, name)
				}
			}
			for _, outcome := range regexp.MustCompile(`outcome="([a-z_]+)"`).FindAllStringSubmatch(r.Expr, -1) {
				if !strings.Contains(body, `outcome="`+outcome[1]+`"`) {
					t.Errorf("alert %s uses outcome %s, which is not a revocation outcome", r.Alert, outcome[1])
				}
			}
		}
	}
	if n < 3 {
		t.Fatalf("%d alert rules, want the overdue, unconfirmed and escaped ones", n)
	}
}

// TestServiceTokenSeries: each service token's series carry its file and
// the fingerprint of the token in force, never more; rotation events are
// counted per file.
func TestServiceTokenSeries(t *testing.T) {
	exp := time.Date(2027, 1, 2, 0, 0, 0, 0, time.UTC)
	m := New(Sources{ServiceTokens: func() []ServiceToken {
		return []ServiceToken{
			{File: "/s/sa-1", Fingerprint: "sha256:aaaaaaaaaaaaaaaa", Usable: true, ExpiresAt: exp,
				BudgetPerMinute: 1500, BudgetRemaining: 1400, GitLabRemaining: -1, Sent: 100, Refused: 2, Paused: 1},
			{File: "/s/sa-2", Fingerprint: "sha256:bbbbbbbbbbbbbbbb", Alert: true, BudgetPerMinute: 1500, BudgetRemaining: 1500, GitLabRemaining: 0},
		}
	}})
	m.ServiceTokenEvent("/s/sa-1", "rotated")
	w := httptest.NewRecorder()
	m.Handler().ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	body := w.Body.String()
	for _, want := range []string{
		`gltoken_gitlab_budget_per_minute{token="sha256:aaaaaaaaaaaaaaaa",token_file="/s/sa-1"} 1500`,
		`gltoken_gitlab_budget_remaining{token="sha256:aaaaaaaaaaaaaaaa",token_file="/s/sa-1"} 1400`,
		`gltoken_gitlab_ratelimit_remaining{token="sha256:aaaaaaaaaaaaaaaa",token_file="/s/sa-1"} -1`,
		`gltoken_gitlab_ratelimit_remaining{token="sha256:bbbbbbbbbbbbbbbb",token_file="/s/sa-2"} 0`,
		`gltoken_gitlab_budget_requests_total{outcome="sent",token="sha256:aaaaaaaaaaaaaaaa",token_file="/s/sa-1"} 100`,
		`gltoken_gitlab_budget_requests_total{outcome="budget_spent",token="sha256:aaaaaaaaaaaaaaaa",token_file="/s/sa-1"} 2`,
		`gltoken_gitlab_budget_requests_total{outcome="gitlab_limited",token="sha256:aaaaaaaaaaaaaaaa",token_file="/s/sa-1"} 1`,
		`gltoken_service_token_usable{token="sha256:aaaaaaaaaaaaaaaa",token_file="/s/sa-1"} 1`,
		`gltoken_service_token_usable{token="sha256:bbbbbbbbbbbbbbbb",token_file="/s/sa-2"} 0`,
		`gltoken_service_token_alert{token="sha256:bbbbbbbbbbbbbbbb",token_file="/s/sa-2"} 1`,
		`gltoken_service_token_expiry_timestamp_seconds{token="sha256:aaaaaaaaaaaaaaaa",token_file="/s/sa-1"} 1.798848e+09`,
		`gltoken_service_token_expiry_timestamp_seconds{token="sha256:bbbbbbbbbbbbbbbb",token_file="/s/sa-2"} 0`,
		`gltoken_service_token_rotations_total{outcome="rotated",token_file="/s/sa-1"} 1`,
	} {
		if !strings.Contains(body, want+"\n") {
			t.Errorf("metrics lack %s", want)
		}
	}
}
