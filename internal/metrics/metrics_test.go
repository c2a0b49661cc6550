package metrics

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
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
