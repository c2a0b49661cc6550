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
	})
	m.Revoked("project_access_token", "unconfirmed")
	m.Revoked("project_access_token", "escaped")
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
					t.Errorf("alert %s uses outcome %s, never counted", r.Alert, outcome[1])
				}
			}
		}
	}
	if n < 3 {
		t.Fatalf("%d alert rules, want the overdue, unconfirmed and escaped ones", n)
	}
}
