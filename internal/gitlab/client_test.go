package gitlab

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"gltoken.dev/gltoken/internal/exchange"
	"gltoken.dev/gltoken/internal/fingerprint"
	"gltoken.dev/gltoken/internal/ledger"
)

// syncBuffer is a log sink safe for concurrent writers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type observed struct {
	mu    sync.Mutex
	calls []string // "METHOD route status"
}

func (o *observed) hook(method, route string, status int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.calls = append(o.calls, method+" "+route+" "+strconv.Itoa(status))
}

func (o *observed) list() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]string(nil), o.calls...)
}

// attempts counts the HTTP attempts the client made with that method.
func (c testClient) attempts(method string) int {
	n := 0
	for _, call := range c.obs.list() {
		if strings.HasPrefix(call, method+" ") {
			n++
		}
	}
	return n
}

type testClient struct {
	*Client
	logs *syncBuffer
	obs  *observed
}

func newTestClient(t testing.TB, baseURL, token string, now func() time.Time) testClient {
	t.Helper()
	logs := &syncBuffer{}
	obs := &observed{}
	c, err := New(Config{
		BaseURL:    baseURL,
		Token:      token,
		Now:        now,
		Logger:     slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		OnResponse: obs.hook,
		RetryWait:  time.Millisecond,
	})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return testClient{Client: c, logs: logs, obs: obs}
}

var fixedNow = time.Date(2026, 11, 27, 2, 30, 15, 0, time.UTC)

func clock() func() time.Time { return func() time.Time { return fixedNow } }

// captureCreate records the JSON body of each create request by path.
func captureCreate(m *miniGitLab) *sync.Map {
	var bodies sync.Map
	m.setFault(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method == http.MethodPost {
			b, _ := io.ReadAll(r.Body)
			bodies.Store(r.URL.EscapedPath(), b)
			r.Body = io.NopCloser(bytes.NewReader(b))
		}
		return false
	})
	return &bodies
}

func TestAccessTokenExpiryDate(t *testing.T) {
	tests := []struct {
		name string
		exp  time.Time
		want string
	}{
		{"mid-day", time.Date(2026, 11, 27, 13, 5, 0, 0, time.UTC), "2026-11-29"},
		{"one second before midnight", time.Date(2026, 11, 27, 23, 59, 59, 0, time.UTC), "2026-11-29"},
		{"exactly midnight", time.Date(2026, 11, 28, 0, 0, 0, 0, time.UTC), "2026-11-30"},
		{"just after midnight", time.Date(2026, 11, 28, 0, 0, 0, 1, time.UTC), "2026-11-30"},
		{"other zone converted to UTC", time.Date(2026, 11, 28, 0, 30, 0, 0, time.FixedZone("CET", 3600)), "2026-11-29"},
		{"year end", time.Date(2026, 12, 31, 22, 0, 0, 0, time.UTC), "2027-01-02"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := AccessTokenExpiryDate(tt.exp)
			if got.Format(time.DateOnly) != tt.want {
				t.Fatalf("AccessTokenExpiryDate(%s) = %s, want %s", tt.exp, got.Format(time.DateOnly), tt.want)
			}
			if !got.After(tt.exp) || got.Location() != time.UTC {
				t.Fatalf("date %s is not a UTC midnight strictly after %s", got, tt.exp)
			}
			// Midnight of that date in the easternmost zone (UTC+14) is still after exp.
			if kiritimati := got.Add(-14 * time.Hour); !kiritimati.After(tt.exp) {
				t.Fatalf("date %s begins at %s in UTC+14, before %s", got.Format(time.DateOnly), kiritimati, tt.exp)
			}
		})
	}
}

func TestMintDeployTokens(t *testing.T) {
	m := newMiniGitLab(t)
	pid := m.addProject("platform/lib")
	gid := m.addGroup("platform/tools")
	bodies := captureCreate(m)
	c := newTestClient(t, m.srv.URL, m.serviceToken, clock())
	exp := fixedNow.Add(time.Hour + 500*time.Millisecond)

	tests := []struct {
		kind  ledger.Kind
		owner string
		id    int64
		path  string
	}{
		{ledger.ProjectDeployToken, "platform/lib", pid, "/api/v4/projects/" + strconv.FormatInt(pid, 10) + "/deploy_tokens"},
		{ledger.GroupDeployToken, "platform/tools", gid, "/api/v4/groups/" + strconv.FormatInt(gid, 10) + "/deploy_tokens"},
	}
	for _, tt := range tests {
		t.Run(string(tt.kind), func(t *testing.T) {
			name := "gltoken-" + string(tt.kind)
			cred, err := c.Mint(context.Background(), exchange.MintRequest{
				Name: name, Kind: tt.kind, Owner: tt.id, OwnerPath: tt.owner,
				Scopes: []string{"read_repository", "read_registry"}, ExpiresAt: exp,
			})
			if err != nil {
				t.Fatalf("Mint: %v", err)
			}
			raw, ok := bodies.Load(tt.path)
			if !ok {
				t.Fatalf("no POST to %s", tt.path)
			}
			var body map[string]any
			if err := json.Unmarshal(raw.([]byte), &body); err != nil {
				t.Fatal(err)
			}
			if body["expires_at"] != "2026-11-27T03:30:15Z" {
				t.Errorf("expires_at sent = %v, want 2026-11-27T03:30:15Z (exact to the second, UTC)", body["expires_at"])
			}
			if _, has := body["username"]; has {
				t.Errorf("username sent (%v); GitLab's default must be used", body["username"])
			}
			if body["name"] != name {
				t.Errorf("name sent = %v", body["name"])
			}
			var tok miniToken
			for _, x := range m.allTokens() {
				if x.Name == name {
					tok = x
				}
			}
			if tok.ID == 0 {
				t.Fatalf("token %s not in the double", name)
			}
			want := exchange.Credential{
				Kind: tt.kind, Owner: tt.id, OwnerPath: tt.owner, GitLabID: tok.ID,
				Name: name, Username: "gitlab+deploy-token-" + strconv.FormatInt(tok.ID, 10), Secret: tok.Secret,
				ExpiresAt: time.Date(2026, 11, 27, 3, 30, 15, 0, time.UTC),
			}
			if !cred.ExpiresAt.Equal(want.ExpiresAt) {
				t.Errorf("ExpiresAt = %s, want %s", cred.ExpiresAt, want.ExpiresAt)
			}
			cred.ExpiresAt = want.ExpiresAt
			if cred != want {
				t.Errorf("credential = %+v\nwant %+v", redacted(cred), redacted(want))
			}
			if strings.Join(tok.Scopes, ",") != "read_repository,read_registry" {
				t.Errorf("scopes = %v", tok.Scopes)
			}
		})
	}
	assertNoSecrets(t, c, m)
}

func redacted(c exchange.Credential) exchange.Credential {
	if c.Secret != "" {
		c.Secret = "sha256:" + fingerprint.Of(c.Secret)[:12]
	}
	return c
}

// assertNoSecrets checks that neither the service token nor any minted secret
// reached the log.
func assertNoSecrets(t *testing.T, c testClient, m *miniGitLab) {
	t.Helper()
	logs := c.logs.String()
	if strings.Contains(logs, m.serviceToken) {
		t.Errorf("service token in logs")
	}
	for _, tok := range m.allTokens() {
		if tok.Secret != "" && strings.Contains(logs, tok.Secret) {
			t.Errorf("secret of %s in logs", tok.Name)
		}
	}
	for _, call := range c.obs.list() {
		if strings.ContainsAny(call, "0123456789") && !isStatusOnly(call) {
			t.Errorf("route with an id in metrics hook: %q", call)
		}
	}
}

// isStatusOnly: the only digits in "METHOD route status" are the status.
func isStatusOnly(call string) bool {
	i := strings.LastIndexByte(call, ' ')
	return !strings.ContainsAny(call[:i], "0123456789")
}

func TestMintAccessTokens(t *testing.T) {
	m := newMiniGitLab(t)
	pid := m.addProject("platform/app")
	gid := m.addGroup("platform")
	c := newTestClient(t, m.srv.URL, m.serviceToken, clock())
	exp := fixedNow.Add(2 * time.Hour) // 04:30:15 UTC on 2026-11-27

	for _, kind := range []ledger.Kind{ledger.ProjectAccessToken, ledger.GroupAccessToken} {
		t.Run(string(kind), func(t *testing.T) {
			name := "gltoken-" + string(kind)
			owner := pid
			if kind == ledger.GroupAccessToken {
				owner = gid
			}
			cred, err := c.Mint(context.Background(), exchange.MintRequest{
				Name: name, Kind: kind, Owner: owner, Scopes: []string{"write_repository"},
				ExpiresAt: exp, AccessLevel: 30,
			})
			if err != nil {
				t.Fatalf("Mint: %v", err)
			}
			var tok miniToken
			for _, x := range m.allTokens() {
				if x.Name == name {
					tok = x
				}
			}
			if tok.ExpiresAt != "2026-11-29" { // see TestAccessTokenExpiryDate
				t.Errorf("expires_at sent = %q, want 2026-11-29", tok.ExpiresAt)
			}
			if tok.AccessLevel != 30 {
				t.Errorf("access_level = %d, want 30", tok.AccessLevel)
			}
			if strings.Join(tok.Scopes, ",") != "write_repository" {
				t.Errorf("scopes = %v", tok.Scopes)
			}
			m.mu.Lock()
			bot := m.users[tok.UserID]
			m.mu.Unlock()
			if cred.Username != bot || bot == "" {
				t.Errorf("username = %q, want the bot's %q", cred.Username, bot)
			}
			if cred.Secret != tok.Secret || cred.GitLabID != tok.ID || !cred.ExpiresAt.Equal(exp) {
				t.Errorf("credential = %+v", redacted(cred))
			}
		})
	}
	assertNoSecrets(t, c, m)
}

func TestMintAccessTokenUsernameFallback(t *testing.T) {
	m := newMiniGitLab(t)
	pid := m.addProject("platform/app")
	m.setFault(func(w http.ResponseWriter, r *http.Request) bool {
		if strings.HasPrefix(r.URL.Path, "/api/v4/users/") {
			writeJSON(w, 403, map[string]string{"message": "403 Forbidden"})
			return true
		}
		return false
	})
	c := newTestClient(t, m.srv.URL, m.serviceToken, clock())
	cred, err := c.Mint(context.Background(), exchange.MintRequest{
		Name: "gltoken-x", Kind: ledger.ProjectAccessToken, Owner: pid,
		Scopes: []string{"read_api"}, ExpiresAt: fixedNow.Add(time.Hour), AccessLevel: 20,
	})
	if err != nil {
		t.Fatalf("Mint: %v", err)
	}
	if cred.Username != "gltoken-x" || cred.Secret == "" {
		t.Fatalf("username = %q, want the token name as fallback", cred.Username)
	}
}

func TestMintRejectsBadRequestsWithoutCallingGitLab(t *testing.T) {
	m := newMiniGitLab(t)
	pid := m.addProject("p/q")
	c := newTestClient(t, m.srv.URL, m.serviceToken, clock())
	good := exchange.MintRequest{Name: "gltoken-1", Kind: ledger.ProjectAccessToken, Owner: pid,
		Scopes: []string{"api"}, ExpiresAt: fixedNow.Add(time.Hour), AccessLevel: 30}
	tests := []struct {
		name string
		edit func(*exchange.MintRequest)
	}{
		{"no expiry", func(r *exchange.MintRequest) { r.ExpiresAt = time.Time{} }},
		{"expiry in the past", func(r *exchange.MintRequest) { r.ExpiresAt = fixedNow.Add(-time.Second) }},
		{"no access level", func(r *exchange.MintRequest) { r.AccessLevel = 0 }},
		{"bad access level", func(r *exchange.MintRequest) { r.AccessLevel = 60 }},
		{"unknown kind", func(r *exchange.MintRequest) { r.Kind = "personal" }},
		{"no name", func(r *exchange.MintRequest) { r.Name = " " }},
		{"no owner", func(r *exchange.MintRequest) { r.Owner = 0 }},
		{"negative owner", func(r *exchange.MintRequest) { r.Owner = -1 }},
		{"no scopes", func(r *exchange.MintRequest) { r.Scopes = nil }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := good
			tt.edit(&req)
			_, err := c.Mint(context.Background(), req)
			if !errors.Is(err, exchange.ErrRejected) {
				t.Fatalf("err = %v, want ErrRejected", err)
			}
		})
	}
	if n := m.count(""); n != 0 {
		t.Fatalf("%d requests reached GitLab, want 0", n)
	}
}

func TestCreateIsNeverRetried(t *testing.T) {
	for _, code := range []int{500, 502, 503, 504} {
		t.Run(strconv.Itoa(code), func(t *testing.T) {
			m := newMiniGitLab(t)
			pid := m.addProject("platform/lib")
			m.setFault(func(w http.ResponseWriter, r *http.Request) bool {
				if r.Method == http.MethodPost {
					writeJSON(w, code, map[string]string{"message": "boom"})
					return true
				}
				return false
			})
			c := newTestClient(t, m.srv.URL, m.serviceToken, clock())
			_, err := c.Mint(context.Background(), exchange.MintRequest{Name: "gltoken-a", Kind: ledger.ProjectDeployToken,
				Owner: pid, Scopes: []string{"read_repository"}, ExpiresAt: fixedNow.Add(time.Hour)})
			if !errors.Is(err, exchange.ErrAmbiguous) {
				t.Fatalf("err = %v, want ErrAmbiguous", err)
			}
			if n := m.count("POST "); n != 1 {
				t.Fatalf("%d POSTs, want exactly 1", n)
			}
		})
	}
}

func TestLostResponseThenFindByName(t *testing.T) {
	kinds := []ledger.Kind{ledger.ProjectDeployToken, ledger.GroupDeployToken, ledger.ProjectAccessToken, ledger.GroupAccessToken}
	for _, kind := range kinds {
		t.Run(string(kind), func(t *testing.T) {
			m := newMiniGitLab(t)
			owner := m.addProject("platform/lib")
			if gid := m.addGroup("platform"); kind == ledger.GroupDeployToken || kind == ledger.GroupAccessToken {
				owner = gid
			}
			// The create happens, then the connection drops before the answer.
			m.setAfter(func(w http.ResponseWriter, r *http.Request, rec *httptest.ResponseRecorder) bool {
				if r.Method != http.MethodPost {
					return false
				}
				conn, _, err := http.NewResponseController(w).Hijack()
				if err == nil {
					conn.Close()
				}
				return true
			})
			// Decoys: same name revoked, other names active.
			oid := owner
			tk := map[ledger.Kind]string{ledger.ProjectDeployToken: "deploy_project", ledger.GroupDeployToken: "deploy_group",
				ledger.ProjectAccessToken: "access_project", ledger.GroupAccessToken: "access_group"}[kind]
			m.addToken(miniToken{Kind: tk, OwnerID: oid, Name: "gltoken-lost", Revoked: true})
			for i := range 45 {
				m.addToken(miniToken{Kind: tk, OwnerID: oid, Name: "gltoken-other-" + strconv.Itoa(i)})
			}

			c := newTestClient(t, m.srv.URL, m.serviceToken, clock())
			_, err := c.Mint(context.Background(), exchange.MintRequest{Name: "gltoken-lost", Kind: kind, Owner: owner,
				Scopes: []string{"read_repository"}, ExpiresAt: fixedNow.Add(time.Hour), AccessLevel: 20})
			if !errors.Is(err, exchange.ErrAmbiguous) {
				t.Fatalf("err = %v, want ErrAmbiguous", err)
			}
			if n := m.count("POST "); n != 1 {
				t.Fatalf("%d POSTs, want 1", n)
			}
			m.setAfter(nil)

			ref, ok, err := c.FindByName(context.Background(), kind, owner, "gltoken-lost")
			if err != nil || !ok {
				t.Fatalf("FindByName = %v, %v, %v", ref, ok, err)
			}
			var created miniToken
			n := 0
			for _, x := range m.allTokens() {
				if x.Name == "gltoken-lost" && !x.Revoked {
					created = x
					n++
				}
			}
			if n != 1 {
				t.Fatalf("%d live tokens named gltoken-lost, want 1", n)
			}
			if ref.GitLabID != created.ID || ref.Kind != kind || ref.Owner != owner {
				t.Fatalf("ref = %+v, want id %d", ref, created.ID)
			}
			// 47 tokens at 100 a page: one list request; the double's default
			// page size (20) is not used because we ask for 100.
			if err := c.Revoke(context.Background(), ref); err != nil {
				t.Fatalf("Revoke: %v", err)
			}
			if _, ok, err := c.FindByName(context.Background(), kind, owner, "gltoken-lost"); err != nil || ok {
				t.Fatalf("after revoke FindByName ok=%v err=%v, want not found", ok, err)
			}
		})
	}
}

func TestFindByNamePaginates(t *testing.T) {
	m := newMiniGitLab(t)
	pid := m.addProject("big/proj")
	for i := range 250 {
		m.addToken(miniToken{Kind: "deploy_project", OwnerID: pid, Name: "gltoken-" + strconv.Itoa(i)})
	}
	c := newTestClient(t, m.srv.URL, m.serviceToken, clock())
	ref, ok, err := c.FindByName(context.Background(), ledger.ProjectDeployToken, pid, "gltoken-249")
	if err != nil || !ok {
		t.Fatalf("FindByName: ok=%v err=%v", ok, err)
	}
	if n := m.count("GET /api/v4/projects/" + strconv.FormatInt(pid, 10) + "/deploy_tokens"); n != 3 {
		t.Fatalf("%d list requests, want 3 pages", n)
	}
	if ref.GitLabID == 0 {
		t.Fatal("no id")
	}
	_, ok, err = c.FindByName(context.Background(), ledger.ProjectDeployToken, pid, "gltoken-nope")
	if err != nil || ok {
		t.Fatalf("missing name: ok=%v err=%v", ok, err)
	}
}

func TestErrorMapping(t *testing.T) {
	tests := []struct {
		name       string
		status     int
		header     map[string]string
		body       map[string]any
		want       error
		wantAlso   error
		retryAfter time.Duration
	}{
		{name: "401", status: 401, body: map[string]any{"message": "401 Unauthorized"}, want: ErrTokenInvalid, wantAlso: exchange.ErrForbidden},
		{name: "403", status: 403, body: map[string]any{"message": "403 Forbidden"}, want: exchange.ErrForbidden},
		{name: "404", status: 404, body: map[string]any{"message": "404 Project Not Found"}, want: exchange.ErrNotFound},
		{name: "400", status: 400, body: map[string]any{"message": map[string]any{"scopes": []string{"is invalid"}}}, want: exchange.ErrRejected},
		{name: "400 permission", status: 400, body: map[string]any{"message": "User does not have permission to create project access token"}, want: exchange.ErrForbidden},
		{name: "422", status: 422, body: map[string]any{"message": "unprocessable"}, want: exchange.ErrRejected},
		{name: "429 Retry-After", status: 429, header: map[string]string{"Retry-After": "17"}, body: map[string]any{"message": "Retry later"},
			want: exchange.ErrRateLimited, retryAfter: 17 * time.Second},
		{name: "429 RateLimit-Reset", status: 429,
			header: map[string]string{"RateLimit-Reset": strconv.FormatInt(fixedNow.Add(42*time.Second).Unix(), 10)},
			body:   map[string]any{"message": "Retry later"}, want: exchange.ErrRateLimited, retryAfter: 42 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := newMiniGitLab(t)
			pid := m.addProject("p/q")
			m.setFault(func(w http.ResponseWriter, r *http.Request) bool {
				if r.Method != http.MethodPost {
					return false
				}
				for k, v := range tt.header {
					w.Header().Set(k, v)
				}
				writeJSON(w, tt.status, tt.body)
				return true
			})
			c := newTestClient(t, m.srv.URL, m.serviceToken, clock())
			_, err := c.Mint(context.Background(), exchange.MintRequest{Name: "gltoken-e", Kind: ledger.ProjectAccessToken, Owner: pid,
				Scopes: []string{"api"}, ExpiresAt: fixedNow.Add(time.Hour), AccessLevel: 30})
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
			if tt.wantAlso != nil && !errors.Is(err, tt.wantAlso) {
				t.Fatalf("err = %v, want also %v", err, tt.wantAlso)
			}
			if errors.Is(err, exchange.ErrAmbiguous) {
				t.Fatalf("a %d is a refusal, not ambiguous: %v", tt.status, err)
			}
			if tt.retryAfter != 0 {
				var ra *exchange.RetryAfterError
				if !errors.As(err, &ra) || ra.After != tt.retryAfter {
					t.Fatalf("err = %#v, want RetryAfterError{%s}", err, tt.retryAfter)
				}
			}
			if n := m.count("POST "); n != 1 {
				t.Fatalf("%d POSTs, want 1 (no retry)", n)
			}
			if strings.Contains(err.Error(), m.serviceToken) {
				t.Fatal("service token in error")
			}
		})
	}
}

func TestErrorMappingOnReadsAndRevokes(t *testing.T) {
	m := newMiniGitLab(t)
	pid := m.addProject("p/q")
	gid := m.addGroup("g")
	c := newTestClient(t, m.srv.URL, m.serviceToken, clock())
	ctx := context.Background()

	if _, err := c.ResolveOwner(ctx, ledger.ProjectDeployToken, "no/such"); !errors.Is(err, exchange.ErrNotFound) {
		t.Fatalf("resolve missing: %v, want ErrNotFound", err)
	}
	if _, _, err := c.FindByName(ctx, ledger.ProjectDeployToken, 999999, "x"); !errors.Is(err, exchange.ErrNotFound) {
		t.Fatalf("find on missing project: %v, want ErrNotFound", err)
	}
	m.setFault(func(w http.ResponseWriter, r *http.Request) bool {
		writeJSON(w, 403, map[string]string{"message": "403 Forbidden"})
		return true
	})
	if err := c.Revoke(ctx, exchange.TokenRef{Kind: ledger.ProjectDeployToken, Owner: pid, GitLabID: 5}); !errors.Is(err, exchange.ErrForbidden) ||
		!strings.Contains(err.Error(), "Maintainer") {
		t.Fatalf("revoke forbidden: %v", err)
	}
	m.setFault(func(w http.ResponseWriter, r *http.Request) bool {
		w.Header().Set("Retry-After", "3")
		writeJSON(w, 429, map[string]string{"message": "Retry later"})
		return true
	})
	var ra *exchange.RetryAfterError
	if _, _, err := c.FindByName(ctx, ledger.GroupAccessToken, gid, "x"); !errors.As(err, &ra) || !errors.Is(err, exchange.ErrRateLimited) || ra.After != 3*time.Second {
		t.Fatalf("list rate limited: %v", err)
	}
	if n := m.count("GET /api/v4/groups/" + strconv.FormatInt(gid, 10) + "/access_tokens"); n != 1 {
		t.Fatalf("429 on GET retried: %d requests", n)
	}
	m.setFault(func(w http.ResponseWriter, r *http.Request) bool {
		writeJSON(w, 503, map[string]string{"message": "down"})
		return true
	})
	if err := c.Revoke(ctx, exchange.TokenRef{Kind: ledger.GroupDeployToken, Owner: gid, GitLabID: 5}); !errors.Is(err, exchange.ErrUnavailable) {
		t.Fatalf("revoke on 503: %v, want ErrUnavailable", err)
	}
	if n := m.count("DELETE /api/v4/groups/" + strconv.FormatInt(gid, 10) + "/deploy_tokens/5"); n != 3 {
		t.Fatalf("DELETE on 503: %d attempts, want 3 (1 + 2 retries)", n)
	}
}

func TestTransportErrors(t *testing.T) {
	m := newMiniGitLab(t)
	pid := m.addProject("p/q")
	c := newTestClient(t, m.srv.URL, m.serviceToken, clock())
	ctx := context.Background()
	m.srv.Close()
	// The create cannot connect: nothing was sent.
	_, err := c.Mint(ctx, exchange.MintRequest{Name: "gltoken-t", Kind: ledger.ProjectDeployToken, Owner: pid,
		Scopes: []string{"read_repository"}, ExpiresAt: fixedNow.Add(time.Hour)})
	if !errors.Is(err, exchange.ErrUnavailable) || errors.Is(err, exchange.ErrAmbiguous) {
		t.Fatalf("create against a closed server: %v, want ErrUnavailable (connection refused is before sending)", err)
	}
	if _, _, err := c.FindByName(ctx, ledger.ProjectDeployToken, pid, "x"); !errors.Is(err, exchange.ErrUnavailable) {
		t.Fatalf("list against a closed server: %v, want ErrUnavailable", err)
	}
}

func TestCreateTimeoutIsAmbiguous(t *testing.T) {
	m := newMiniGitLab(t)
	pid := m.addProject("p/q")
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	m.setFault(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method != http.MethodPost {
			return false
		}
		select { // hold the answer until the client gives up
		case <-r.Context().Done():
		case <-release:
		}
		return true
	})
	c := newTestClient(t, m.srv.URL, m.serviceToken, clock())
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := c.Mint(ctx, exchange.MintRequest{Name: "gltoken-t", Kind: ledger.ProjectDeployToken, Owner: pid,
		Scopes: []string{"read_repository"}, ExpiresAt: fixedNow.Add(time.Hour)})
	if !errors.Is(err, exchange.ErrAmbiguous) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want ErrAmbiguous and DeadlineExceeded", err)
	}

	// A context already done before the create: nothing is sent.
	done, cancel2 := context.WithCancel(context.Background())
	cancel2()
	_, err = c.Mint(done, exchange.MintRequest{Name: "gltoken-u", Kind: ledger.ProjectDeployToken, Owner: pid,
		Scopes: []string{"read_repository"}, ExpiresAt: fixedNow.Add(time.Hour)})
	if errors.Is(err, exchange.ErrAmbiguous) || !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want a non-ambiguous Canceled", err)
	}
	if n := m.count("POST "); n != 1 {
		t.Fatalf("%d POSTs, want 1", n)
	}
}

func TestReadsRetryAFewTimes(t *testing.T) {
	m := newMiniGitLab(t)
	pid := m.addProject("p/q")
	m.addToken(miniToken{Kind: "deploy_project", OwnerID: pid, Name: "gltoken-r"})
	fails := 2
	var mu sync.Mutex
	m.setFault(func(w http.ResponseWriter, r *http.Request) bool {
		mu.Lock()
		defer mu.Unlock()
		if r.Method == http.MethodGet && fails > 0 {
			fails--
			writeJSON(w, 502, map[string]string{"message": "bad gateway"})
			return true
		}
		return false
	})
	c := newTestClient(t, m.srv.URL, m.serviceToken, clock())
	_, ok, err := c.FindByName(context.Background(), ledger.ProjectDeployToken, pid, "gltoken-r")
	if err != nil || !ok {
		t.Fatalf("FindByName after two 502s: ok=%v err=%v", ok, err)
	}
	if n := m.count("GET "); n != 3 {
		t.Fatalf("%d GETs, want 3", n)
	}
	calls := c.obs.list()
	want := []string{
		"GET GET /projects/:id/deploy_tokens 502",
		"GET GET /projects/:id/deploy_tokens 502",
		"GET GET /projects/:id/deploy_tokens 200",
	}
	if strings.Join(calls, "|") != strings.Join(want, "|") {
		t.Fatalf("OnResponse calls = %q, want %q", calls, want)
	}
}

func TestRevokeIsIdempotent(t *testing.T) {
	m := newMiniGitLab(t)
	pq := m.addProject("p/q")
	g := m.addGroup("g")
	c := newTestClient(t, m.srv.URL, m.serviceToken, clock())
	ctx := context.Background()
	for _, kind := range []ledger.Kind{ledger.ProjectDeployToken, ledger.GroupDeployToken, ledger.ProjectAccessToken, ledger.GroupAccessToken} {
		t.Run(string(kind), func(t *testing.T) {
			owner := pq
			if kind == ledger.GroupDeployToken || kind == ledger.GroupAccessToken {
				owner = g
			}
			cred, err := c.Mint(ctx, exchange.MintRequest{Name: "gltoken-rv-" + string(kind), Kind: kind, Owner: owner,
				Scopes: []string{"read_repository"}, ExpiresAt: fixedNow.Add(time.Hour), AccessLevel: 20})
			if err != nil {
				t.Fatal(err)
			}
			ref := exchange.TokenRef{Kind: kind, Owner: cred.Owner, GitLabID: cred.GitLabID}
			for i := range 2 {
				if err := c.Revoke(ctx, ref); err != nil {
					t.Fatalf("Revoke #%d: %v", i+1, err)
				}
			}
			for _, x := range m.allTokens() {
				if x.ID == cred.GitLabID && !x.Revoked {
					t.Fatalf("token still live: %+v", x.Name)
				}
			}
		})
	}
	// GitLab answers 400 when revoking an access token whose bot is gone;
	// the token is revoked, so that is success.
	pid := m.addProject("p/r")
	tok := m.addToken(miniToken{Kind: "access_project", OwnerID: pid, Name: "gltoken-old", Revoked: true})
	m.setFault(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method == http.MethodDelete {
			writeJSON(w, 400, map[string]string{"message": "400 Bad request - Failed to find bot user"})
			return true
		}
		return false
	})
	if err := c.Revoke(ctx, exchange.TokenRef{Kind: ledger.ProjectAccessToken, Owner: pid, GitLabID: tok.ID}); err != nil {
		t.Fatalf("Revoke of an already revoked token answering 400: %v", err)
	}
	live := m.addToken(miniToken{Kind: "access_project", OwnerID: pid, Name: "gltoken-live"})
	if err := c.Revoke(ctx, exchange.TokenRef{Kind: ledger.ProjectAccessToken, Owner: pid, GitLabID: live.ID}); !errors.Is(err, exchange.ErrRejected) {
		t.Fatalf("Revoke of a live token answering 400: %v, want ErrRejected", err)
	}
}

func TestPing(t *testing.T) {
	m := newMiniGitLab(t)
	c := newTestClient(t, m.srv.URL, m.serviceToken, clock())
	if err := c.Ping(context.Background()); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	bad := newTestClient(t, m.srv.URL, "glpat-wrong", clock())
	err := bad.Ping(context.Background())
	if !errors.Is(err, ErrTokenInvalid) || !errors.Is(err, exchange.ErrForbidden) {
		t.Fatalf("Ping with a bad token: %v, want ErrTokenInvalid", err)
	}
	if strings.Contains(err.Error(), "glpat-wrong") {
		t.Fatal("token in error")
	}
	m.setFault(func(w http.ResponseWriter, r *http.Request) bool {
		writeJSON(w, 200, map[string]any{"id": 1, "name": "svc", "active": true, "scopes": []string{"read_api"}})
		return true
	})
	if err := c.Ping(context.Background()); err == nil || !strings.Contains(err.Error(), "api scope") {
		t.Fatalf("Ping with a read_api token: %v", err)
	}
	m.setFault(func(w http.ResponseWriter, r *http.Request) bool {
		writeJSON(w, 503, map[string]any{"message": "down"})
		return true
	})
	if err := c.Ping(context.Background()); !errors.Is(err, exchange.ErrUnavailable) {
		t.Fatalf("Ping on 503: %v", err)
	}
}

func TestNewValidates(t *testing.T) {
	tests := []Config{
		{BaseURL: "", Token: "x"},
		{BaseURL: "gitlab.example.com", Token: "x"},
		{BaseURL: "https://gitlab.example.com", Token: " "},
	}
	for _, cfg := range tests {
		if _, err := New(cfg); err == nil {
			t.Errorf("New(%+v) accepted", cfg)
		}
	}
	hc := &http.Client{Timeout: time.Second}
	if _, err := New(Config{BaseURL: "https://gitlab.example.com", Token: "x", HTTPClient: hc, OnResponse: func(string, string, int) {}}); err != nil {
		t.Fatal(err)
	}
	if hc.Transport != nil {
		t.Fatal("New modified the injected http.Client")
	}
}

func TestConcurrentMints(t *testing.T) {
	m := newMiniGitLab(t)
	pid := m.addProject("p/q")
	c := newTestClient(t, m.srv.URL, m.serviceToken, clock())
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			kind := ledger.ProjectDeployToken
			if i%2 == 1 {
				kind = ledger.ProjectAccessToken
			}
			_, err := c.Mint(context.Background(), exchange.MintRequest{Name: "gltoken-c" + strconv.Itoa(i), Kind: kind, Owner: pid,
				Scopes: []string{"read_repository"}, ExpiresAt: fixedNow.Add(time.Hour), AccessLevel: 20})
			if err != nil {
				t.Errorf("Mint %d: %v", i, err)
			}
		})
	}
	wg.Wait()
	if n := len(m.allTokens()); n != 8 {
		t.Fatalf("%d tokens, want 8", n)
	}
	// The owner is an id: minting looks nothing up (ResolveOwner did, once).
	if n := m.count("GET /api/v4/projects/"); n != 0 {
		t.Fatalf("%d project lookups while minting, want 0", n)
	}
	assertNoSecrets(t, c, m)
}

func TestRedirectsAreNotFollowed(t *testing.T) {
	var leaked sync.Map
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if v := r.Header.Get("PRIVATE-TOKEN"); v != "" {
			leaked.Store("token", v)
		}
		writeJSON(w, 200, map[string]any{"id": 7})
	}))
	defer other.Close()
	redirector := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, other.URL+r.URL.Path, http.StatusFound)
	}))
	defer redirector.Close()
	c := newTestClient(t, redirector.URL, "glpat-secret-service-token", clock())
	_, err := c.ResolveOwner(context.Background(), ledger.ProjectDeployToken, "p/q")
	if !errors.Is(err, exchange.ErrUnavailable) || !strings.Contains(err.Error(), "redirect") {
		t.Fatalf("err = %v, want ErrUnavailable naming the redirect", err)
	}
	if _, ok := leaked.Load("token"); ok {
		t.Fatal("service token sent to the redirect target")
	}
}

func TestPingFallsBackToVersion(t *testing.T) {
	var versions int
	var mu sync.Mutex
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/api/v4/version":
			mu.Lock()
			versions++
			mu.Unlock()
			writeJSON(w, 200, map[string]string{"version": "15.0.0", "revision": "abc"})
		default:
			writeJSON(w, 404, map[string]string{"message": "404 Not Found"})
		}
	}))
	defer srv.Close()
	c := newTestClient(t, srv.URL, "glpat-x", clock())
	if err := c.Ping(context.Background()); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	if versions != 1 {
		t.Fatalf("%d GET /version, want 1", versions)
	}
}

func TestCertificateErrorNotRetried(t *testing.T) {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, map[string]any{"id": 1})
	}))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the handshake failure is expected
	srv.StartTLS()
	defer srv.Close()
	// The client does not trust the test server's certificate.
	c := newTestClient(t, srv.URL, "glpat-x", clock())
	_, err := c.ResolveOwner(context.Background(), ledger.ProjectDeployToken, "p/q")
	if !errors.Is(err, exchange.ErrUnavailable) {
		t.Fatalf("err = %v, want ErrUnavailable", err)
	}
	if calls := c.obs.list(); len(calls) != 1 || calls[0] != "GET GET /projects/:id 0" {
		t.Fatalf("attempts = %q, want one failed GET", calls)
	}
}

func TestGitLabMessage(t *testing.T) {
	tests := []struct {
		name, body, want string
	}{
		{"message string", `{"message":"403 Forbidden"}`, "403 Forbidden"},
		{"error string", `{"error":"scopes does not have a valid value"}`, "scopes does not have a valid value"},
		{"message object", `{"message":{"name":["has already been taken"]}}`, "{message: {name: [has already been taken]}}"},
		{"plain text", "Retry later\n", "Retry later"},
		{"long html", "<html>" + strings.Repeat("x", 1000), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(http.StatusBadRequest)
				_, _ = io.WriteString(w, tt.body)
			}))
			defer srv.Close()
			c := newTestClient(t, srv.URL, "glpat-x", clock())
			_, err := c.ResolveOwner(context.Background(), ledger.GroupDeployToken, "g")
			if !errors.Is(err, exchange.ErrRejected) {
				t.Fatalf("err = %v, want ErrRejected", err)
			}
			if tt.want != "" && !strings.HasSuffix(err.Error(), "400 "+tt.want) {
				t.Fatalf("err = %q, want it to end with %q", err, "400 "+tt.want)
			}
			if len(err.Error()) > 500 {
				t.Fatalf("error of %d bytes: GitLab's message is not bounded", len(err.Error()))
			}
		})
	}
}
