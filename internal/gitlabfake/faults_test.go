package gitlabfake

import (
	"crypto/x509"
	"encoding/pem"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	gitlab "gitlab.com/gitlab-org/api/client-go"
)

func TestUnknownRouteAnswers501(t *testing.T) {
	t.Parallel()
	s := Start(t, Options{})
	r := doRaw(t, "PUT", s.URL()+"/api/v4/projects/1/variables", "", "", "")
	if r.status != http.StatusNotImplemented {
		t.Fatalf("status %d", r.status)
	}
	if got := r.json(t)["message"]; got != "stand-in: route not implemented: PUT /api/v4/projects/1/variables" {
		t.Fatalf("message %q", got)
	}
	reqs := s.Requests()
	if len(reqs) != 1 || reqs[0].Status != 501 || reqs[0].Path != "/api/v4/projects/1/variables" {
		t.Fatalf("Requests() = %+v", reqs)
	}
}

func TestFaults(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	c := newClient(t, f.s, f.svcPAT)
	opts := &gitlab.CreateProjectDeployTokenOptions{Name: gitlab.Ptr("lost"), Scopes: &[]string{"read_repository"}}

	t.Run("429 with Retry-After", func(t *testing.T) {
		remove := f.s.InjectFault(Fault{Method: "GET", PathPrefix: "/api/v4/projects/", Status: 429, RetryAfter: 7 * time.Second, Times: 1})
		defer remove()
		r := doRaw(t, "GET", f.s.URL()+"/api/v4/projects/1", f.svcPAT, "", "")
		if r.status != 429 || r.header.Get("Retry-After") != "7" {
			t.Fatalf("%d Retry-After=%q", r.status, r.header.Get("Retry-After"))
		}
		if r2 := doRaw(t, "GET", f.s.URL()+"/api/v4/projects/1", f.svcPAT, "", ""); r2.status != 200 {
			t.Fatalf("fault with Times=1 fired again: %d", r2.status)
		}
	})
	t.Run("5xx until removed", func(t *testing.T) {
		remove := f.s.InjectFault(Fault{PathPrefix: "/api/v4/projects/1", Status: 503})
		for i := 0; i < 2; i++ {
			if r := doRaw(t, "GET", f.s.URL()+"/api/v4/projects/1", f.svcPAT, "", ""); r.status != 503 {
				t.Fatalf("status %d", r.status)
			}
		}
		remove()
		if r := doRaw(t, "GET", f.s.URL()+"/api/v4/projects/1", f.svcPAT, "", ""); r.status != 200 {
			t.Fatalf("after remove: %d", r.status)
		}
	})
	t.Run("GitLab's message", func(t *testing.T) {
		// With GitLab 18.6's rate_limiting_headers_for_unthrottled_requests
		// every answer but a 429 carries the throttle's RateLimit-*.
		f.s.SetRateLimitHeaders(true)
		defer f.s.SetRateLimitHeaders(false)
		for _, tt := range []struct {
			name    string
			fault   Fault
			body    string
			headers map[string]string // "" means absent
		}{
			{"string", Fault{Status: 400, Message: "400 Bad request - Failed to find bot user", Times: 1},
				`{"message":"400 Bad request - Failed to find bot user"}`, map[string]string{"Content-Type": "application/json"}},
			{"validation errors", Fault{Status: 400, Message: map[string][]string{"name": {"has already been taken"}}, Times: 1},
				`{"message":{"name":["has already been taken"]}}`, nil},
			{"application rate limit", Fault{Status: 429, Message: map[string]string{"error": "This endpoint has been requested too many times. Try again later."}, Times: 1},
				`{"message":{"error":"This endpoint has been requested too many times. Try again later."}}`,
				map[string]string{"Retry-After": "", "Content-Type": "application/json"}},
			{"default", Fault{Status: 422, Times: 1}, `{"message":"422 Unprocessable Entity"}`, nil},
		} {
			t.Run(tt.name, func(t *testing.T) {
				tt.fault.Method, tt.fault.PathPrefix = "GET", "/api/v4/projects/1"
				f.s.InjectFault(tt.fault)
				r := doRaw(t, "GET", f.s.URL()+"/api/v4/projects/1", f.svcPAT, "", "")
				if r.status != tt.fault.Status || strings.TrimSpace(string(r.body)) != tt.body {
					t.Fatalf("%d %s, want %d %s", r.status, r.body, tt.fault.Status, tt.body)
				}
				for k, v := range tt.headers {
					if got := r.header.Get(k); got != v {
						t.Errorf("%s = %q, want %q", k, got, v)
					}
				}
				if got := r.header.Get("RateLimit-Reset"); (got == "") != (tt.fault.Status == http.StatusTooManyRequests) {
					t.Errorf("RateLimit-Reset = %q on a %d: want it on every answer but a 429", got, tt.fault.Status)
				}
			})
		}
	})
	t.Run("lost response: 502 after the work is done", func(t *testing.T) {
		f.s.InjectFault(Fault{Method: "POST", PathPrefix: "/api/v4/projects/platform%2Fapp/deploy_tokens", LoseResponse: true, Status: 502, Times: 1})
		_, resp, err := c.DeployTokens.CreateProjectDeployToken("platform/app", opts)
		if err == nil || resp == nil || resp.StatusCode != 502 {
			t.Fatalf("client saw %v", err)
		}
		if st, ok := f.s.TokenByName("lost"); !ok || st.Kind != KindDeployProject {
			t.Fatal("the token was not created although the request was performed")
		}
	})
	t.Run("lost response: dropped connection", func(t *testing.T) {
		f.s.InjectFault(Fault{Method: "POST", PathPrefix: "/api/v4/projects/platform%2Fapp/access_tokens", LoseResponse: true, Times: 1})
		_, _, err := c.ProjectAccessTokens.CreateProjectAccessToken("platform/app", &gitlab.CreateProjectAccessTokenOptions{
			Name: gitlab.Ptr("dropped"), Scopes: &[]string{"read_repository"},
		})
		if err == nil {
			t.Fatal("client got an answer through a dropped connection")
		}
		if _, ok := f.s.TokenByName("dropped"); !ok {
			t.Fatal("the token was not created")
		}
	})
}

// TestRateLimit: GitLab's authenticated API throttle as Rack::Attack runs
// it: one bucket per user (two tokens of one user share it, another user's
// is apart) in a window aligned to the minute; the 429 carries every header
// and Retry-After; other answers carry RateLimit-* only with the 18.6 flag;
// requests outside /api/ and unauthenticated ones are not counted.
func TestRateLimit(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	f.clock.Set(time.Date(2026, 3, 10, 12, 0, 45, 0, time.UTC))
	f.s.SetRateLimit(3)
	second := f.s.CreatePersonalAccessToken(f.svc, "second", []string{"api"}, nil)
	other := f.s.AddUser("other")
	f.s.AddMember(other, "platform/app", Developer)
	otherPAT := f.s.CreatePersonalAccessToken(other, "mine", []string{"api"}, nil)
	get := func(token string) apiResult { return doRaw(t, "GET", f.s.URL()+"/api/v4/projects/1", token, "", "") }

	for i, tok := range []string{f.svcPAT, second, f.svcPAT} {
		r := get(tok)
		if r.status != 200 {
			t.Fatalf("request %d: %d", i+1, r.status)
		}
		for k := range r.header {
			if strings.HasPrefix(k, "Ratelimit-") || k == "Retry-After" {
				t.Fatalf("request %d: %s on an unthrottled answer without the flag", i+1, k)
			}
		}
	}
	// Not counted: outside the API, and without a token.
	for _, u := range []string{"/oauth/discovery/keys", "/api/v4/version"} {
		if r := doRaw(t, "GET", f.s.URL()+u, "", "", ""); r.status == 429 {
			t.Fatalf("%s unauthenticated: 429", u)
		}
	}
	if f.s.RateLimitObserved(f.svc) != 3 {
		t.Fatalf("observed for the service account %d, want 3 (both its tokens)", f.s.RateLimitObserved(f.svc))
	}
	r := get(second)
	if r.status != 429 || string(r.body) != "Retry later\n" || r.header.Get("Content-Type") != "text/plain" {
		t.Fatalf("over the limit: %d %q", r.status, r.body)
	}
	reset := time.Date(2026, 3, 10, 12, 1, 0, 0, time.UTC)
	for k, want := range map[string]string{
		"RateLimit-Name": "throttle_authenticated_api", "RateLimit-Limit": "3", "RateLimit-Observed": "4",
		"RateLimit-Remaining": "0", "RateLimit-Reset": strconv.FormatInt(reset.Unix(), 10),
		"RateLimit-ResetTime": reset.Format(http.TimeFormat), "Retry-After": "15",
	} {
		if got := r.header.Get(k); got != want {
			t.Errorf("429 %s = %q, want %q", k, got, want)
		}
	}
	// Another user has a bucket of its own.
	if r := get(otherPAT); r.status != 200 {
		t.Fatalf("another user while the service account is throttled: %d", r.status)
	}
	// The requests name the token each came with, never its secret.
	counts := map[int64]int{}
	for _, q := range f.s.Requests() {
		if q.Path == "/api/v4/projects/1" {
			counts[q.TokenID]++
		}
	}
	if len(counts) != 3 || counts[0] != 0 {
		t.Fatalf("requests by token %v, want three tokens", counts)
	}

	// GitLab 18.6's rate_limiting_headers_for_unthrottled_requests: every
	// counted answer carries the common headers, without Retry-After.
	f.clock.Set(reset)
	f.s.SetRateLimitHeaders(true)
	for i := 1; i <= 3; i++ {
		r := get(f.svcPAT)
		if r.status != 200 || r.header.Get("RateLimit-Remaining") != strconv.Itoa(3-i) || r.header.Get("RateLimit-Observed") != strconv.Itoa(i) ||
			r.header.Get("RateLimit-Reset") != strconv.FormatInt(reset.Add(time.Minute).Unix(), 10) {
			t.Fatalf("request %d of the next window: %d %v", i, r.status, r.header)
		}
		if r.header.Get("Retry-After") != "" || r.header.Get("RateLimit-ResetTime") != "" {
			t.Fatalf("request %d: throttled-only headers on a 200: %v", i, r.header)
		}
	}
	if r := get(f.svcPAT); r.status != 429 || r.header.Get("Retry-After") != "60" {
		t.Fatalf("over the limit with the flag: %d Retry-After=%q", r.status, r.header.Get("Retry-After"))
	}
}

func TestRegistryTokenGrantsOnlyAllowedActions(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	c := newClient(t, f.s, f.svcPAT)
	dt, _, err := c.DeployTokens.CreateProjectDeployToken("platform/app", &gitlab.CreateProjectDeployTokenOptions{
		Name: gitlab.Ptr("reg"), Scopes: &[]string{"read_registry"},
	})
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest("GET", f.s.URL()+"/jwt/auth?service=container_registry&scope=repository:platform/app:pull,push", nil)
	req.SetBasicAuth(dt.Username, dt.Token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	var body struct{ Token string }
	if err := jsonDecode(resp, &body); err != nil {
		t.Fatal(err)
	}

	// Verify as distribution does: kid is the libtrust id of a certificate in the bundle.
	block, _ := pem.Decode(f.s.RegistryCertPEM())
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	pub := cert.PublicKey.(*rsaPublicKey)
	wantKID, err := LibtrustKeyID(pub)
	if err != nil {
		t.Fatal(err)
	}
	if !regexpLibtrust.MatchString(wantKID) {
		t.Fatalf("libtrust kid %q has the wrong shape", wantKID)
	}
	claims := jwt.MapClaims{}
	tok, err := jwt.ParseWithClaims(body.Token, claims, func(tk *jwt.Token) (any, error) {
		if tk.Header["kid"] != wantKID {
			t.Fatalf("kid %v, want %s", tk.Header["kid"], wantKID)
		}
		return pub, nil
	}, jwt.WithValidMethods([]string{"RS256"}), jwt.WithIssuer("gitlab-issuer"), jwt.WithAudience("container_registry"),
		jwt.WithTimeFunc(f.clock.Now))
	if err != nil || !tok.Valid {
		t.Fatal(err)
	}
	access := claims["access"].([]any)
	if len(access) != 1 {
		t.Fatalf("access %v", access)
	}
	a := access[0].(map[string]any)
	acts := a["actions"].([]any)
	if a["name"] != "platform/app" || len(acts) != 1 || acts[0] != "pull" {
		t.Fatalf("granted %v, want pull only", a)
	}
	if exp, iat := claims["exp"].(float64), claims["iat"].(float64); exp-iat != 300 {
		t.Fatalf("lifetime %v s, want 300", exp-iat)
	}

	// Bad credentials: 401.
	req2, _ := http.NewRequest("GET", f.s.URL()+"/jwt/auth?service=container_registry&scope=repository:platform/app:pull", nil)
	req2.SetBasicAuth("wrong", dt.Token)
	resp2, err := http.DefaultClient.Do(req2)
	if err != nil {
		t.Fatal(err)
	}
	resp2.Body.Close()
	if resp2.StatusCode != 401 {
		t.Fatalf("bad credentials: %d", resp2.StatusCode)
	}
	if !strings.Contains(f.s.RegistryIssuer(), "gitlab-issuer") {
		t.Fatal("issuer")
	}
}
