package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"gltoken.dev/gltoken/internal/exchange"
	"gltoken.dev/gltoken/internal/ledger"
)

// pickyService grants the ID token "valid" and refuses every other one as
// the verifier would.
type pickyService struct{}

func (pickyService) Exchange(_ context.Context, req exchange.Request) (*exchange.Issued, error) {
	if req.SubjectToken != "valid" {
		return nil, &exchange.Error{Code: exchange.CodeInvalidGrant, Description: "the ID token was refused: malformed token"}
	}
	return &exchange.Issued{AccessToken: "gldt-abc", Username: "u", ExpiresAt: time.Now().Add(time.Hour), Scopes: req.Scopes, Kind: ledger.ProjectDeployToken}, nil
}

func (pickyService) Revoke(context.Context, string, string, string) error { return nil }

type reasons struct {
	mu sync.Mutex
	n  map[string]int
}

func (r *reasons) add(reason string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.n == nil {
		r.n = map[string]int{}
	}
	r.n[reason]++
}

func TestFailureGuardNeverBlocksValidRequests(t *testing.T) {
	var limited reasons
	h := Handler(Options{Service: pickyService{}, Guard: NewFailureGuard(0.001, 3, 0), Limited: limited.add})
	from := func(addr, token string) *http.Response {
		f := validForm()
		f.Set("subject_token", token)
		return post(t, h, "/v1/token", f.Encode(), func(r *http.Request) { r.RemoteAddr = addr }).Result()
	}
	var codes []int
	for i := range 6 {
		resp := from("10.0.0.7:"+string(rune('1'+i))+"000", "garbage")
		codes = append(codes, resp.StatusCode)
		if resp.StatusCode == 429 {
			var body map[string]string
			_ = json.NewDecoder(resp.Body).Decode(&body)
			if resp.Header.Get("Retry-After") == "" || !strings.Contains(body["error_description"], "malformed token") || body["error"] != "temporarily_unavailable" {
				t.Fatalf("429 without Retry-After or without the request's own failure: %v %v", resp.Header, body)
			}
		}
	}
	if want := []int{400, 400, 400, 429, 429, 429}; !equalInts(codes, want) {
		t.Fatalf("garbage from one IP: codes %v, want %v", codes, want)
	}
	// The same IP (another connection) with a valid ID token: served.
	for range 3 {
		if c := from("10.0.0.7:9999", "valid").StatusCode; c != 200 {
			t.Fatalf("valid request from the garbage sender's IP: %d, want 200", c)
		}
	}
	// Another IP has a budget of its own.
	if c := from("10.0.0.8:1000", "garbage").StatusCode; c != 400 {
		t.Fatalf("first failure of another IP: %d, want 400", c)
	}
	if limited.n[ReasonPeerFailures] != 3 {
		t.Fatalf("429s counted %v, want 3 %s", limited.n, ReasonPeerFailures)
	}
}

func TestFailureGuardKeysUnixPeersByUID(t *testing.T) {
	g := NewFailureGuard(0.001, 1, 0)
	g.Failed("uid=1000 pid=1")
	if over, after := g.Exhausted("uid=1000 pid=2"); !over || after <= 0 {
		t.Fatalf("another process of uid 1000: exhausted %v after %s, want exhausted", over, after)
	}
	if over, _ := g.Exhausted("uid=1001 pid=1"); over {
		t.Fatal("uid 1001 exhausted by uid 1000's failure")
	}
	if over, _ := g.Exhausted("uid=1000 pid=3 cn=x"); !over {
		t.Fatal("a TLS peer suffix changed the key")
	}
}

func TestLimiterLRUEvictsOneAtATime(t *testing.T) {
	g := NewFailureGuard(0.001, 1, 3)
	for _, ip := range []string{"10.0.0.1", "10.0.0.2", "10.0.0.3"} {
		g.Failed(ip + ":1")
	}
	g.Exhausted("10.0.0.1:1") // used: now the most recent
	g.Failed("10.0.0.4:1")    // full: the least recently used (10.0.0.2) goes
	if g.Len() != 3 {
		t.Fatalf("remembers %d peers, want 3", g.Len())
	}
	for ip, want := range map[string]bool{"10.0.0.1": true, "10.0.0.2": false, "10.0.0.3": true, "10.0.0.4": true} {
		if over, _ := g.Exhausted(ip + ":1"); over != want {
			t.Errorf("%s exhausted = %v, want %v (only the least recently used peer is forgotten)", ip, over, want)
		}
	}
}

func TestMintQuotas(t *testing.T) {
	at := time.Date(2026, 12, 2, 8, 0, 0, 0, time.UTC)
	q := NewMintQuotas(QuotaConfig{PerJobPerMinute: 2, PerProjectPerMinute: 3})
	q.now = func() time.Time { return at }
	allow := func(job, project string) (bool, time.Duration, string) {
		return q.AllowMint(exchange.MintSubject{Job: job, Project: project, Owner: "platform/lib"})
	}
	for range 2 {
		if ok, _, _ := allow("job-1", "p"); !ok {
			t.Fatal("job-1 refused within its quota")
		}
	}
	ok, after, reason := allow("job-1", "p")
	if ok || reason != ReasonJobMints || after < 29*time.Second || after > 31*time.Second {
		t.Fatalf("third mint of job-1: ok %v after %s reason %q, want refused for %s after ~30s", ok, after, reason, ReasonJobMints)
	}
	if ok, _, _ := allow("job-2", "p"); !ok {
		t.Fatal("job-2 refused: project p has one mint left")
	}
	ok, _, reason = allow("job-3", "p")
	if ok || reason != ReasonProjectMints {
		t.Fatalf("fourth mint of project p: ok %v reason %q, want %s", ok, reason, ReasonProjectMints)
	}
	// The refusal by the project quota spent nothing of job-3's own.
	if ok, _, _ := allow("job-3", "q"); !ok {
		t.Fatal("job-3 refused on another project")
	}
	if ok, _, _ := allow("job-3", "q"); !ok {
		t.Fatal("job-3's second mint refused: the project refusal spent its quota")
	}
	at = at.Add(30 * time.Second)
	if ok, _, _ := allow("job-1", "q"); !ok {
		t.Fatal("job-1 still refused after its refill")
	}
	unlimited := NewMintQuotas(QuotaConfig{})
	for range 1000 {
		if ok, _, _ := unlimited.AllowMint(exchange.MintSubject{Job: "j", Project: "p"}); !ok {
			t.Fatal("zero quotas must mean unlimited")
		}
	}
}

func TestRemintsAfterClientRevokeAreCapped(t *testing.T) {
	at := time.Date(2026, 12, 2, 8, 0, 0, 0, time.UTC)
	q := NewMintQuotas(QuotaConfig{PerJobPerMinute: 1000, PerProjectPerMinute: 1000, RemintsAfterRevoke: 2, RemintWindow: 10 * time.Minute})
	q.now = func() time.Time { return at }
	lib := exchange.MintSubject{Job: "job:1", Project: "7", Owner: "platform/lib"}
	other := exchange.MintSubject{Job: "job:1", Project: "7", Owner: "platform/other"}
	for range 10 {
		if ok, _, _ := q.AllowMint(lib); !ok {
			t.Fatal("mints before any revoke are only bounded by the per-minute quotas")
		}
	}
	q.ClientRevoked("job:1", "platform/lib")
	for i := range 2 {
		if ok, _, _ := q.AllowMint(lib); !ok {
			t.Fatalf("re-mint %d after a revoke refused; the cap is 2", i+1)
		}
		q.ClientRevoked("job:1", "platform/lib")
	}
	ok, after, reason := q.AllowMint(lib)
	if ok || reason != ReasonRemints || after < 4*time.Minute || after > 6*time.Minute {
		t.Fatalf("third re-mint: ok %v after %s reason %q, want refused (%s) for ~5m", ok, after, reason, ReasonRemints)
	}
	if ok, _, _ := q.AllowMint(other); !ok {
		t.Fatal("another owner of the same job is not capped")
	}
	if ok, _, _ := q.AllowMint(exchange.MintSubject{Job: "job:2", Project: "7", Owner: "platform/lib"}); !ok {
		t.Fatal("another job on the same owner is not capped")
	}
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestReadyzCannotLoadTheStore: however many probes arrive, the store is
// pinged at most once per readyTTL (failures are remembered as long).
func TestReadyzCannotLoadTheStore(t *testing.T) {
	var mu sync.Mutex
	calls := 0
	var fail error
	at := time.Date(2026, 12, 2, 8, 0, 0, 0, time.UTC)
	h := Handler(Options{Service: &fakeService{}, Now: func() time.Time { mu.Lock(); defer mu.Unlock(); return at },
		Ready: func(context.Context) error {
			mu.Lock()
			defer mu.Unlock()
			calls++
			time.Sleep(time.Millisecond)
			return fail
		}})
	probe := func() int {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/readyz", nil))
		return w.Code
	}
	var wg sync.WaitGroup
	for range 200 {
		wg.Add(1)
		go func() { defer wg.Done(); probe() }()
	}
	wg.Wait()
	if calls != 1 {
		t.Fatalf("200 probes pinged the store %d times, want 1", calls)
	}
	mu.Lock()
	at, fail = at.Add(readyTTL), errors.New("store down")
	mu.Unlock()
	for range 50 {
		if c := probe(); c != 503 {
			t.Fatalf("readyz %d with the store down", c)
		}
	}
	if calls != 2 {
		t.Fatalf("after the TTL: %d pings, want 2", calls)
	}
	mu.Lock()
	at = at.Add(failTTL)
	mu.Unlock()
	for range 50 {
		probe()
	}
	if calls != 3 {
		t.Fatalf("a failure is remembered for %s: %d pings, want 3", failTTL, calls)
	}
}
