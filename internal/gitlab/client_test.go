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
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"gltoken.dev/gltoken/internal/exchange"
	"gltoken.dev/gltoken/internal/fingerprint"
	"gltoken.dev/gltoken/internal/gitlabfake"
	"gltoken.dev/gltoken/internal/ledger"
	"gltoken.dev/gltoken/internal/syncbuf"
)

// Most tests here run the client against the project's GitLab stand-in
// (internal/gitlabfake) on a fixed clock, with its faults for what GitLab
// does when things go wrong. Inline httptest servers remain only for what the
// stand-in cannot be: a TLS server the client does not trust, a redirecting
// front, and answers that are broken byte by byte.

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
	logs *syncbuf.Buffer
	obs  *observed
}

func newTestClient(t testing.TB, baseURL, token string, now func() time.Time) testClient {
	t.Helper()
	return newTestClientWith(t, Config{BaseURL: baseURL, Token: token, Now: now})
}

// newTestClientWith builds a client from cfg that logs at debug level into
// logs and reports its attempts to obs.
func newTestClientWith(t testing.TB, cfg Config) testClient {
	t.Helper()
	logs := &syncbuf.Buffer{}
	obs := &observed{}
	cfg.Logger = slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	cfg.OnResponse = obs.hook
	cfg.RetryWait = time.Millisecond
	c, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return testClient{Client: c, logs: logs, obs: obs}
}

var fixedNow = time.Date(2026, 11, 27, 2, 30, 15, 0, time.UTC)

func clock() func() time.Time { return func() time.Time { return fixedNow } }

// newFixedStandin is the stand-in and its client on a clock standing at fixedNow.
func newFixedStandin(t *testing.T) standin {
	t.Helper()
	return startStandin(t, clock())
}

// standinKind is the stand-in's name of a credential kind.
func standinKind(k ledger.Kind) string {
	return map[ledger.Kind]string{
		ledger.ProjectDeployToken: gitlabfake.KindDeployProject, ledger.GroupDeployToken: gitlabfake.KindDeployGroup,
		ledger.ProjectAccessToken: gitlabfake.KindProjectAccess, ledger.GroupAccessToken: gitlabfake.KindGroupAccess,
	}[k]
}

// mint mints a credential of kind on owner, for setting up a test.
func mint(t *testing.T, c testClient, kind ledger.Kind, owner int64, name string) exchange.Credential {
	t.Helper()
	cred, err := c.Mint(context.Background(), exchange.MintRequest{Name: name, Kind: kind, Owner: owner,
		Scopes: []string{"read_repository"}, ExpiresAt: fixedNow.Add(time.Hour), AccessLevel: 20})
	if err != nil {
		t.Fatalf("Mint %s: %v", name, err)
	}
	return cred
}

// sentBodies is a transport that keeps the body of each request by
// "METHOD /escaped/path".
type sentBodies struct {
	next   http.RoundTripper
	bodies sync.Map
}

func (b *sentBodies) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Body == nil || req.Body == http.NoBody {
		return b.next.RoundTrip(req)
	}
	body, err := io.ReadAll(req.Body)
	_ = req.Body.Close()
	if err != nil {
		return nil, err
	}
	b.bodies.Store(req.Method+" "+req.URL.EscapedPath(), body)
	r := req.Clone(req.Context())
	r.Body = io.NopCloser(bytes.NewReader(body))
	return b.next.RoundTrip(r)
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
	st := newFixedStandin(t)
	pid := st.project("platform/lib")
	gid := st.group("platform/tools")
	sent := &sentBodies{next: http.DefaultTransport}
	c := newTestClientWith(t, Config{BaseURL: st.s.URL(), Token: st.token, Now: clock(),
		HTTPClient: &http.Client{Transport: sent, Timeout: 30 * time.Second}})
	exp := fixedNow.Add(time.Hour + 500*time.Millisecond)

	tests := []struct {
		kind  ledger.Kind
		owner string
		id    int64
		path  string
	}{
		{ledger.ProjectDeployToken, "platform/lib", pid, "POST /api/v4/projects/" + strconv.FormatInt(pid, 10) + "/deploy_tokens"},
		{ledger.GroupDeployToken, "platform/tools", gid, "POST /api/v4/groups/" + strconv.FormatInt(gid, 10) + "/deploy_tokens"},
	}
	secrets := []string{st.token}
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
			secrets = append(secrets, cred.Secret)
			raw, ok := sent.bodies.Load(tt.path)
			if !ok {
				t.Fatalf("no %s", tt.path)
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
			tok, ok := st.s.TokenByName(name)
			if !ok {
				t.Fatalf("token %s not in the stand-in", name)
			}
			if tok.Kind != standinKind(tt.kind) || tok.OwnerPath != tt.owner {
				t.Errorf("stand-in token = %s on %s, want %s on %s", tok.Kind, tok.OwnerPath, standinKind(tt.kind), tt.owner)
			}
			if fingerprint.Of(cred.Secret) != tok.SecretSHA256 {
				t.Errorf("secret is not the one the stand-in issued")
			}
			want := exchange.Credential{
				Kind: tt.kind, Owner: tt.id, OwnerPath: tt.owner, GitLabID: tok.ID,
				Name: name, Username: "gitlab+deploy-token-" + strconv.FormatInt(tok.ID, 10), Secret: cred.Secret,
				ExpiresAt: time.Date(2026, 11, 27, 3, 30, 15, 0, time.UTC),
			}
			if !cred.ExpiresAt.Equal(want.ExpiresAt) {
				t.Errorf("ExpiresAt = %s, want %s", cred.ExpiresAt, want.ExpiresAt)
			}
			if tok.ExpiresAt == nil || !tok.ExpiresAt.Equal(want.ExpiresAt) {
				t.Errorf("stand-in expires_at = %v, want %s", tok.ExpiresAt, want.ExpiresAt)
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
	assertNoSecrets(t, c, secrets...)
}

func redacted(c exchange.Credential) exchange.Credential {
	if c.Secret != "" {
		c.Secret = "sha256:" + fingerprint.Of(c.Secret)[:12]
	}
	return c
}

// gitlabSecret matches the secrets the stand-in makes (glpat-…, gldt-…).
var gitlabSecret = regexp.MustCompile(`gl(pat|dt)-[0-9A-Za-z_-]{20}`)

// assertNoSecrets checks that none of secrets (the service token and the
// minted ones), nor anything shaped like a GitLab secret, reached the log,
// and that the metrics hook saw no id.
func assertNoSecrets(t *testing.T, c testClient, secrets ...string) {
	t.Helper()
	logs := c.logs.String()
	if logs == "" {
		t.Error("nothing logged: the check below would prove nothing")
	}
	for i, s := range secrets {
		if s == "" {
			t.Errorf("secret #%d is empty", i)
		} else if strings.Contains(logs, s) {
			t.Errorf("secret #%d (sha256 %s) in logs", i, fingerprint.Of(s)[:12])
		}
	}
	if m := gitlabSecret.FindString(logs); m != "" {
		t.Errorf("a GitLab secret (sha256 %s) in logs", fingerprint.Of(m)[:12])
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
	st := newFixedStandin(t)
	pid := st.project("platform/app")
	gid := st.group("platform")
	c := st.c
	exp := fixedNow.Add(2 * time.Hour) // 04:30:15 UTC on 2026-11-27

	secrets := []string{st.token}
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
			secrets = append(secrets, cred.Secret)
			tok, ok := st.s.TokenByName(name)
			if !ok || tok.Kind != standinKind(kind) {
				t.Fatalf("stand-in token %s = %+v, %v", name, tok, ok)
			}
			if tok.ExpiresAt == nil || tok.ExpiresAt.Format(time.DateOnly) != "2026-11-29" { // see TestAccessTokenExpiryDate
				t.Errorf("expires_at sent = %v, want 2026-11-29", tok.ExpiresAt)
			}
			if tok.AccessLevel != 30 {
				t.Errorf("access_level = %d, want 30", tok.AccessLevel)
			}
			if strings.Join(tok.Scopes, ",") != "write_repository" {
				t.Errorf("scopes = %v", tok.Scopes)
			}
			bot, ok := st.s.UserByName(tok.Username)
			if !ok || !bot.Bot || bot.ID != tok.UserID || cred.Username != bot.Username {
				t.Errorf("username = %q, want the bot's %q (user %d)", cred.Username, tok.Username, tok.UserID)
			}
			if fingerprint.Of(cred.Secret) != tok.SecretSHA256 || cred.GitLabID != tok.ID || !cred.ExpiresAt.Equal(exp) {
				t.Errorf("credential = %+v", redacted(cred))
			}
		})
	}
	assertNoSecrets(t, c, secrets...)
}

func TestMintAccessTokenUsernameFallback(t *testing.T) {
	st := newFixedStandin(t)
	pid := st.project("platform/app")
	st.s.InjectFault(gitlabfake.Fault{Method: http.MethodGet, PathPrefix: "/api/v4/users/", Status: http.StatusForbidden})
	cred, err := st.c.Mint(context.Background(), exchange.MintRequest{
		Name: "gltoken-x", Kind: ledger.ProjectAccessToken, Owner: pid,
		Scopes: []string{"read_api"}, ExpiresAt: fixedNow.Add(time.Hour), AccessLevel: 20,
	})
	if err != nil {
		t.Fatalf("Mint: %v", err)
	}
	if cred.Username != "gltoken-x" || cred.Secret == "" {
		t.Fatalf("username = %q, want the token name as fallback", cred.Username)
	}
	if n := st.count(http.MethodGet, "/api/v4/users/"); n != 1 {
		t.Fatalf("%d user lookups, want 1 (the one answered 403)", n)
	}
}

func TestMintRejectsBadRequestsWithoutCallingGitLab(t *testing.T) {
	st := newFixedStandin(t)
	pid := st.project("p/q")
	c := st.c
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
	if n := len(st.s.Requests()); n != 0 {
		t.Fatalf("%d requests reached GitLab, want 0", n)
	}
}

func TestCreateIsNeverRetried(t *testing.T) {
	st := newFixedStandin(t)
	pid := st.project("platform/lib")
	for _, code := range []int{500, 502, 503, 504} {
		t.Run(strconv.Itoa(code), func(t *testing.T) {
			remove := st.s.InjectFault(gitlabfake.Fault{Method: http.MethodPost, Status: code})
			defer remove()
			before := st.count(http.MethodPost, "")
			_, err := st.client(t).Mint(context.Background(), exchange.MintRequest{Name: "gltoken-a", Kind: ledger.ProjectDeployToken,
				Owner: pid, Scopes: []string{"read_repository"}, ExpiresAt: fixedNow.Add(time.Hour)})
			if !errors.Is(err, exchange.ErrAmbiguous) {
				t.Fatalf("err = %v, want ErrAmbiguous", err)
			}
			if n := st.count(http.MethodPost, "") - before; n != 1 {
				t.Fatalf("%d POSTs, want exactly 1", n)
			}
		})
	}
}

func TestLostResponseThenFindByName(t *testing.T) {
	st := newFixedStandin(t)
	pid := st.project("platform/lib")
	gid := st.group("platform")
	kinds := []ledger.Kind{ledger.ProjectDeployToken, ledger.GroupDeployToken, ledger.ProjectAccessToken, ledger.GroupAccessToken}
	for _, kind := range kinds {
		t.Run(string(kind), func(t *testing.T) {
			owner := pid
			if kind == ledger.GroupDeployToken || kind == ledger.GroupAccessToken {
				owner = gid
			}
			// Decoys: same name revoked (as in GitLab's UI), other names active.
			setup := st.client(t)
			old := mint(t, setup, kind, owner, "gltoken-lost")
			st.s.RevokeToken(standinKind(kind), old.GitLabID)
			for i := range 45 {
				mint(t, setup, kind, owner, "gltoken-other-"+strconv.Itoa(i))
			}

			// The create happens, then the connection drops before the answer.
			remove := st.s.InjectFault(gitlabfake.Fault{Method: http.MethodPost, LoseResponse: true, Times: 1})
			c := st.client(t)
			_, err := c.Mint(context.Background(), exchange.MintRequest{Name: "gltoken-lost", Kind: kind, Owner: owner,
				Scopes: []string{"read_repository"}, ExpiresAt: fixedNow.Add(time.Hour), AccessLevel: 20})
			if !errors.Is(err, exchange.ErrAmbiguous) {
				t.Fatalf("err = %v, want ErrAmbiguous", err)
			}
			if n := c.attempts(http.MethodPost); n != 1 {
				t.Fatalf("%d POSTs, want 1", n)
			}
			remove()

			ref, ok, err := c.FindByName(context.Background(), kind, owner, "gltoken-lost")
			if err != nil || !ok {
				t.Fatalf("FindByName = %v, %v, %v", ref, ok, err)
			}
			var created gitlabfake.TokenState
			n := 0
			for _, x := range st.s.Tokens() {
				if x.Name == "gltoken-lost" && x.Kind == standinKind(kind) && !x.Revoked && !x.Deleted {
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
			if strings.Contains(c.logs.String(), "several active") {
				t.Fatalf("the revoked decoy counted as a match: %s", c.logs.String())
			}
			// 47 tokens: one page, as FindByName asks for 100 a page (GitLab's default is 20).
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
	st := newFixedStandin(t)
	pid := st.project("big/proj")
	setup := st.client(t)
	for i := range 250 {
		mint(t, setup, ledger.ProjectDeployToken, pid, "gltoken-"+strconv.Itoa(i))
	}
	c := st.c
	ref, ok, err := c.FindByName(context.Background(), ledger.ProjectDeployToken, pid, "gltoken-249")
	if err != nil || !ok {
		t.Fatalf("FindByName: ok=%v err=%v", ok, err)
	}
	if n := st.count(http.MethodGet, "/api/v4/projects/"+strconv.FormatInt(pid, 10)+"/deploy_tokens"); n != 3 {
		t.Fatalf("%d list requests, want 3 pages", n)
	}
	if tok, _ := st.s.TokenByName("gltoken-249"); ref.GitLabID == 0 || ref.GitLabID != tok.ID {
		t.Fatalf("id = %d, want %d", ref.GitLabID, tok.ID)
	}
	_, ok, err = c.FindByName(context.Background(), ledger.ProjectDeployToken, pid, "gltoken-nope")
	if err != nil || ok {
		t.Fatalf("missing name: ok=%v err=%v", ok, err)
	}
}

func TestErrorMapping(t *testing.T) {
	tests := []struct {
		name       string
		fault      gitlabfake.Fault // on the create
		want       error
		wantAlso   error
		retryAfter time.Duration
	}{
		{name: "401", fault: gitlabfake.Fault{Status: 401}, want: ErrTokenInvalid, wantAlso: exchange.ErrForbidden},
		{name: "403", fault: gitlabfake.Fault{Status: 403}, want: exchange.ErrForbidden},
		{name: "404", fault: gitlabfake.Fault{Status: 404, Message: "404 Project Not Found"}, want: exchange.ErrNotFound},
		{name: "400", fault: gitlabfake.Fault{Status: 400, Message: map[string][]string{"scopes": {"is invalid"}}}, want: exchange.ErrRejected},
		{name: "400 permission", fault: gitlabfake.Fault{Status: 400,
			Message: "400 Bad request - User does not have permission to create project access token"}, want: exchange.ErrForbidden},
		{name: "422", fault: gitlabfake.Fault{Status: 422}, want: exchange.ErrRejected},
		{name: "429 Retry-After", fault: gitlabfake.Fault{Status: 429, RetryAfter: 17 * time.Second},
			want: exchange.ErrRateLimited, retryAfter: 17 * time.Second},
		// An application rate limit answers without Retry-After and
		// without RateLimit-* (GitLab's header middleware leaves every 429
		// alone): the wait is a minute, GitLab's rate-limit period.
		{name: "429 application rate limit", fault: gitlabfake.Fault{Status: 429,
			Message: map[string]string{"error": "This endpoint has been requested too many times. Try again later."}},
			want: exchange.ErrRateLimited, retryAfter: time.Minute},
	}
	st := newFixedStandin(t)
	pid := st.project("p/q")
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.fault.Method = http.MethodPost
			remove := st.s.InjectFault(tt.fault)
			defer remove()
			before := st.count(http.MethodPost, "")
			_, err := st.client(t).Mint(context.Background(), exchange.MintRequest{Name: "gltoken-e", Kind: ledger.ProjectAccessToken, Owner: pid,
				Scopes: []string{"api"}, ExpiresAt: fixedNow.Add(time.Hour), AccessLevel: 30})
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
			if tt.wantAlso != nil && !errors.Is(err, tt.wantAlso) {
				t.Fatalf("err = %v, want also %v", err, tt.wantAlso)
			}
			if errors.Is(err, exchange.ErrAmbiguous) {
				t.Fatalf("a %d is a refusal, not ambiguous: %v", tt.fault.Status, err)
			}
			if tt.retryAfter != 0 {
				var ra *exchange.RetryAfterError
				if !errors.As(err, &ra) || ra.After != tt.retryAfter {
					t.Fatalf("err = %#v, want RetryAfterError{%s}", err, tt.retryAfter)
				}
			}
			if n := st.count(http.MethodPost, "") - before; n != 1 {
				t.Fatalf("%d POSTs, want 1 (no retry)", n)
			}
			if strings.Contains(err.Error(), st.token) {
				t.Fatal("service token in error")
			}
		})
	}
}

func TestErrorMappingOnReadsAndRevokes(t *testing.T) {
	st := newFixedStandin(t)
	pid := st.project("p/q")
	gid := st.group("g")
	c := st.c
	ctx := context.Background()

	if _, err := c.ResolveOwner(ctx, ledger.ProjectDeployToken, "no/such"); !errors.Is(err, exchange.ErrNotFound) {
		t.Fatalf("resolve missing: %v, want ErrNotFound", err)
	}
	if _, _, err := c.FindByName(ctx, ledger.ProjectDeployToken, 999999, "x"); !errors.Is(err, exchange.ErrNotFound) {
		t.Fatalf("find on missing project: %v, want ErrNotFound", err)
	}
	// A service account that is only a Developer: GitLab answers 403.
	dev := st.s.AddUser("developer-svc")
	st.s.AddMember(dev, "p/q", gitlabfake.Developer)
	devExp := fixedNow.AddDate(0, 1, 0)
	weak := newTestClient(t, st.s.URL(), st.s.CreatePersonalAccessToken(dev, "dev", []string{"api"}, &devExp), clock())
	if err := weak.Revoke(ctx, exchange.TokenRef{Kind: ledger.ProjectDeployToken, Owner: pid, GitLabID: 5}); !errors.Is(err, exchange.ErrForbidden) ||
		!strings.Contains(err.Error(), "Maintainer") {
		t.Fatalf("revoke forbidden: %v", err)
	}
	if n := st.count(http.MethodDelete, "/api/v4/projects/"+strconv.FormatInt(pid, 10)+"/deploy_tokens/5"); n != 1 {
		t.Fatalf("DELETE answered 403: %d attempts, want 1", n)
	}
	remove := st.s.InjectFault(gitlabfake.Fault{Status: 429, RetryAfter: 3 * time.Second})
	var ra *exchange.RetryAfterError
	if _, _, err := c.FindByName(ctx, ledger.GroupAccessToken, gid, "x"); !errors.As(err, &ra) || !errors.Is(err, exchange.ErrRateLimited) || ra.After != 3*time.Second {
		t.Fatalf("list rate limited: %v", err)
	}
	if n := st.count(http.MethodGet, "/api/v4/groups/"+strconv.FormatInt(gid, 10)+"/access_tokens"); n != 1 {
		t.Fatalf("429 on GET retried: %d requests", n)
	}
	remove()
	// GitLab's throttle holds the token's calls for its Retry-After, and
	// the clock stands still: go on with another client.
	c = st.client(t)
	st.s.InjectFault(gitlabfake.Fault{Status: 503})
	if err := c.Revoke(ctx, exchange.TokenRef{Kind: ledger.GroupDeployToken, Owner: gid, GitLabID: 5}); !errors.Is(err, exchange.ErrUnavailable) {
		t.Fatalf("revoke on 503: %v, want ErrUnavailable", err)
	}
	if n := st.count(http.MethodDelete, "/api/v4/groups/"+strconv.FormatInt(gid, 10)+"/deploy_tokens/5"); n != 3 {
		t.Fatalf("DELETE on 503: %d attempts, want 3 (1 + 2 retries)", n)
	}
}

func TestTransportErrors(t *testing.T) {
	st := newFixedStandin(t)
	pid := st.project("p/q")
	c := st.c
	ctx := context.Background()
	if err := st.s.Close(); err != nil {
		t.Fatal(err)
	}
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
	st := newFixedStandin(t)
	pid := st.project("p/q")
	// GitLab holds the create's answer until the client gives up.
	st.s.InjectFault(gitlabfake.Fault{Method: http.MethodPost, Latency: time.Hour})
	c := st.c
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
	// Counted by the client: the stand-in logs the held request only once it ends.
	if n := c.attempts(http.MethodPost); n != 1 {
		t.Fatalf("%d POSTs, want 1", n)
	}
}

func TestReadsRetryAFewTimes(t *testing.T) {
	st := newFixedStandin(t)
	pid := st.project("p/q")
	mint(t, st.client(t), ledger.ProjectDeployToken, pid, "gltoken-r")
	st.s.InjectFault(gitlabfake.Fault{Method: http.MethodGet, Status: http.StatusBadGateway, Times: 2})
	c := st.c
	_, ok, err := c.FindByName(context.Background(), ledger.ProjectDeployToken, pid, "gltoken-r")
	if err != nil || !ok {
		t.Fatalf("FindByName after two 502s: ok=%v err=%v", ok, err)
	}
	if n := st.count(http.MethodGet, ""); n != 3 {
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
	st := newFixedStandin(t)
	pq := st.project("p/q")
	g := st.group("g")
	c := st.c
	ctx := context.Background()
	for _, kind := range []ledger.Kind{ledger.ProjectDeployToken, ledger.GroupDeployToken, ledger.ProjectAccessToken, ledger.GroupAccessToken} {
		t.Run(string(kind), func(t *testing.T) {
			owner := pq
			if kind == ledger.GroupDeployToken || kind == ledger.GroupAccessToken {
				owner = g
			}
			name := "gltoken-rv-" + string(kind)
			cred := mint(t, c, kind, owner, name)
			ref := exchange.TokenRef{Kind: kind, Owner: cred.Owner, GitLabID: cred.GitLabID}
			for i := range 2 {
				if err := c.Revoke(ctx, ref); err != nil {
					t.Fatalf("Revoke #%d: %v", i+1, err)
				}
			}
			if n := st.liveTokens(name); n != 0 {
				t.Fatalf("token still live: %s", name)
			}
		})
	}
	// GitLab answers 400 when revoking an access token whose bot is gone;
	// the token is revoked, so that is success.
	pid := st.project("p/r")
	old := mint(t, st.client(t), ledger.ProjectAccessToken, pid, "gltoken-old")
	st.s.RevokeToken(gitlabfake.KindProjectAccess, old.GitLabID)
	live := mint(t, st.client(t), ledger.ProjectAccessToken, pid, "gltoken-live")
	st.s.InjectFault(gitlabfake.Fault{Method: http.MethodDelete, Status: http.StatusBadRequest,
		Message: "400 Bad request - Failed to find bot user"})
	if err := c.Revoke(ctx, exchange.TokenRef{Kind: ledger.ProjectAccessToken, Owner: pid, GitLabID: old.GitLabID}); err != nil {
		t.Fatalf("Revoke of an already revoked token answering 400: %v", err)
	}
	if err := c.Revoke(ctx, exchange.TokenRef{Kind: ledger.ProjectAccessToken, Owner: pid, GitLabID: live.GitLabID}); !errors.Is(err, exchange.ErrRejected) {
		t.Fatalf("Revoke of a live token answering 400: %v, want ErrRejected", err)
	}
}

func TestPing(t *testing.T) {
	st := newFixedStandin(t)
	c := st.c
	if err := c.Ping(context.Background()); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	bad := newTestClient(t, st.s.URL(), "glpat-wrong", clock())
	err := bad.Ping(context.Background())
	if !errors.Is(err, ErrTokenInvalid) || !errors.Is(err, exchange.ErrForbidden) {
		t.Fatalf("Ping with a bad token: %v, want ErrTokenInvalid", err)
	}
	if strings.Contains(err.Error(), "glpat-wrong") {
		t.Fatal("token in error")
	}
	exp := fixedNow.AddDate(0, 6, 0)
	readOnly := newTestClient(t, st.s.URL(), st.s.CreatePersonalAccessToken(st.svc, "read-only", []string{"read_api"}, &exp), clock())
	if err := readOnly.Ping(context.Background()); err == nil || !strings.Contains(err.Error(), "api scope") {
		t.Fatalf("Ping with a read_api token: %v", err)
	}
	st.s.InjectFault(gitlabfake.Fault{Status: http.StatusServiceUnavailable})
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
	st := newFixedStandin(t)
	pid := st.project("p/q")
	c := st.c
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		secrets = []string{st.token}
	)
	for i := range 8 {
		wg.Go(func() {
			kind := ledger.ProjectDeployToken
			if i%2 == 1 {
				kind = ledger.ProjectAccessToken
			}
			cred, err := c.Mint(context.Background(), exchange.MintRequest{Name: "gltoken-c" + strconv.Itoa(i), Kind: kind, Owner: pid,
				Scopes: []string{"read_repository"}, ExpiresAt: fixedNow.Add(time.Hour), AccessLevel: 20})
			if err != nil {
				t.Errorf("Mint %d: %v", i, err)
				return
			}
			mu.Lock()
			secrets = append(secrets, cred.Secret)
			mu.Unlock()
		})
	}
	wg.Wait()
	n := 0
	for _, tok := range st.s.Tokens() {
		if tok.OwnerPath == "p/q" {
			n++
		}
	}
	if n != 8 {
		t.Fatalf("%d tokens, want 8", n)
	}
	// The owner is an id: minting looks nothing up (ResolveOwner did, once).
	if n := st.count(http.MethodGet, "/api/v4/projects/"); n != 0 {
		t.Fatalf("%d project lookups while minting, want 0", n)
	}
	assertNoSecrets(t, c, secrets...)
}

// TestRedirectsAreNotFollowed: a front that redirects (a GitLab URL set to
// the wrong address) gets an error; the service token never follows the
// redirect to GitLab, which sees no request at all.
func TestRedirectsAreNotFollowed(t *testing.T) {
	st := newFixedStandin(t)
	st.project("p/q")
	redirector := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, st.s.URL()+r.URL.RequestURI(), http.StatusFound)
	}))
	defer redirector.Close()
	c := newTestClient(t, redirector.URL, st.token, clock())
	_, err := c.ResolveOwner(context.Background(), ledger.ProjectDeployToken, "p/q")
	if !errors.Is(err, exchange.ErrUnavailable) || !strings.Contains(err.Error(), "redirect") {
		t.Fatalf("err = %v, want ErrUnavailable naming the redirect", err)
	}
	if reqs := st.s.Requests(); len(reqs) != 0 {
		t.Fatalf("the redirect was followed, with the service token: %+v", reqs)
	}
}

// TestPingFallsBackToVersion: GitLab before 15.5 has no
// /personal_access_tokens/self (404); /version, which needs a valid token
// too, stands in.
func TestPingFallsBackToVersion(t *testing.T) {
	st := newFixedStandin(t)
	st.s.InjectFault(gitlabfake.Fault{Method: http.MethodGet, PathPrefix: "/api/v4/personal_access_tokens/self", Status: http.StatusNotFound})
	if err := st.c.Ping(context.Background()); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	if n := st.count(http.MethodGet, "/api/v4/version"); n != 1 {
		t.Fatalf("%d GET /version, want 1", n)
	}
	bad := newTestClient(t, st.s.URL(), "glpat-wrong", clock())
	if err := bad.Ping(context.Background()); !errors.Is(err, ErrTokenInvalid) {
		t.Fatalf("Ping with a bad token through /version: %v, want ErrTokenInvalid", err)
	}
}

// TestCreateUnreadableAnswerIsAmbiguous: a 2xx to a create whose body cannot
// be read may have made a token whose secret is lost: ambiguous. The same on
// a read is only unavailable.
func TestCreateUnreadableAnswerIsAmbiguous(t *testing.T) {
	const partial = `{"id": 7, "name": "gltoken-b", "token": "gldt-0123456789abcdefghij"`
	tests := []struct {
		name   string
		answer func(w http.ResponseWriter)
	}{
		{"malformed JSON", func(w http.ResponseWriter) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusCreated)
			_, _ = io.WriteString(w, partial)
		}},
		{"cut short", func(w http.ResponseWriter) {
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("Content-Length", strconv.Itoa(len(partial)+10))
			w.WriteHeader(http.StatusCreated)
			_, _ = io.WriteString(w, partial)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { tt.answer(w) }))
			defer srv.Close()
			c := newTestClient(t, srv.URL, "glpat-x", clock())
			_, err := c.Mint(context.Background(), exchange.MintRequest{Name: "gltoken-b", Kind: ledger.ProjectDeployToken, Owner: 1,
				Scopes: []string{"read_repository"}, ExpiresAt: fixedNow.Add(time.Hour)})
			if !errors.Is(err, exchange.ErrAmbiguous) || !strings.Contains(err.Error(), "unreadable") {
				t.Fatalf("create: err = %v, want ErrAmbiguous naming the unreadable answer", err)
			}
			if strings.Contains(err.Error(), "gldt-") {
				t.Fatal("secret in error")
			}
			_, err = c.ResolveOwner(context.Background(), ledger.ProjectDeployToken, "p/q")
			if !errors.Is(err, exchange.ErrUnavailable) || errors.Is(err, exchange.ErrAmbiguous) {
				t.Fatalf("read: err = %v, want ErrUnavailable", err)
			}
		})
	}
}

func TestCertificateErrorNotRetried(t *testing.T) {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"id": 1}`)
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
