package httpapi

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"gltoken.dev/gltoken/internal/exchange"
	"gltoken.dev/gltoken/internal/ledger"
)

type fakeService struct {
	got     exchange.Request
	err     error
	revoked []string
}

var _ Exchanger = (*fakeService)(nil)

var now = time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)

func (f *fakeService) Exchange(_ context.Context, req exchange.Request) (*exchange.Issued, error) {
	f.got = req
	if f.err != nil {
		return nil, f.err
	}
	return &exchange.Issued{AccessToken: "gldt-abc", Username: "gitlab+deploy-token-1", ExpiresAt: now.Add(time.Hour),
		Scopes: req.Scopes, Kind: ledger.ProjectDeployToken}, nil
}

func (f *fakeService) Revoke(_ context.Context, _, token, _ string) error {
	f.revoked = append(f.revoked, token)
	return f.err
}

func validForm() url.Values {
	return url.Values{
		"grant_type":         {grantTypeTokenExchange},
		"subject_token":      {"eyJ.fake.token"},
		"subject_token_type": {tokenTypeJWT},
		"resource":           {"https://gitlab.example.com/platform/lib.git"},
		"scope":              {"read_repository read_registry"},
	}
}

func post(t *testing.T, h http.Handler, path, body string, mod func(*http.Request)) *httptest.ResponseRecorder {
	t.Helper()
	r := httptest.NewRequest(http.MethodPost, path, strings.NewReader(body))
	r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if mod != nil {
		mod(r)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

func TestTokenSuccess(t *testing.T) {
	svc := &fakeService{}
	h := Handler(Options{Service: svc, Now: func() time.Time { return now }})
	w := post(t, h, "/v1/token", validForm().Encode(), nil)
	if w.Code != http.StatusOK {
		t.Fatalf("status %d: %s", w.Code, w.Body)
	}
	if cc := w.Header().Get("Cache-Control"); cc != "no-store" {
		t.Errorf("Cache-Control = %q", cc)
	}
	var got map[string]any
	if err := json.Unmarshal(w.Body.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"access_token": "gldt-abc", "issued_token_type": tokenTypeAccessToken, "token_type": "N_A",
		"expires_in": float64(3600), "scope": "read_repository read_registry", "username": "gitlab+deploy-token-1"}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %v, want %v", k, got[k], v)
		}
	}
	if len(svc.got.Resources) != 1 || svc.got.Resources[0] != "https://gitlab.example.com/platform/lib.git" || len(svc.got.Scopes) != 2 || svc.got.RequestID == "" {
		t.Errorf("service got %+v", svc.got)
	}
}

// TestTokenSeveralResources: resource may repeat (RFC 8693, section 2.1),
// up to exchange.MaxResources, and reaches the service in order.
func TestTokenSeveralResources(t *testing.T) {
	f := validForm()
	f.Set("resource", "https://registry.example.com/platform/a")
	f.Add("resource", "https://registry.example.com/platform/b")
	svc := &fakeService{}
	w := post(t, Handler(Options{Service: svc}), "/v1/token", f.Encode(), nil)
	if w.Code != http.StatusOK {
		t.Fatalf("status %d: %s", w.Code, w.Body)
	}
	if want := []string{"https://registry.example.com/platform/a", "https://registry.example.com/platform/b"}; !slices.Equal(svc.got.Resources, want) {
		t.Fatalf("service got resources %q, want %q", svc.got.Resources, want)
	}
	for i := 2; i <= exchange.MaxResources; i++ {
		f.Add("resource", fmt.Sprintf("https://registry.example.com/platform/p%d", i))
	}
	svc = &fakeService{}
	w = post(t, Handler(Options{Service: svc}), "/v1/token", f.Encode(), nil)
	if w.Code != http.StatusBadRequest || !strings.Contains(w.Body.String(), fmt.Sprintf("at most %d resource parameters", exchange.MaxResources)) || svc.got.SubjectToken != "" {
		t.Fatalf("%d resources: %d %s", len(f["resource"]), w.Code, w.Body)
	}
}

func TestTokenBadRequests(t *testing.T) {
	with := func(k, v string) string {
		f := validForm()
		f.Set(k, v)
		return f.Encode()
	}
	without := func(k string) string {
		f := validForm()
		f.Del(k)
		return f.Encode()
	}
	tests := []struct {
		name   string
		body   string
		mod    func(*http.Request)
		status int
		code   string
	}{
		{"no grant_type", without("grant_type"), nil, 400, "invalid_request"},
		{"other grant", with("grant_type", "client_credentials"), nil, 400, "unsupported_grant_type"},
		{"no subject token", without("subject_token"), nil, 400, "invalid_request"},
		{"no subject token type", without("subject_token_type"), nil, 400, "invalid_request"},
		{"saml subject", with("subject_token_type", "urn:ietf:params:oauth:token-type:saml2"), nil, 400, "invalid_request"},
		{"actor token", with("actor_token", "x"), nil, 400, "invalid_request"},
		{"repeated parameter", validForm().Encode() + "&scope=api", nil, 400, "invalid_request"},
		{"query parameters", validForm().Encode(), func(r *http.Request) { r.URL.RawQuery = "subject_token=x" }, 400, "invalid_request"},
		{"json body", `{"grant_type":"x"}`, func(r *http.Request) { r.Header.Set("Content-Type", "application/json") }, 400, "invalid_request"},
		{"oversize body", with("subject_token", strings.Repeat("a", maxBodyBytes)), nil, 400, "invalid_request"},
		{"too many scopes", with("scope", strings.Repeat("read_repository ", maxScopes+1)), nil, 400, "invalid_scope"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			svc := &fakeService{}
			w := post(t, Handler(Options{Service: svc}), "/v1/token", tt.body, tt.mod)
			if w.Code != tt.status {
				t.Fatalf("status %d, want %d: %s", w.Code, tt.status, w.Body)
			}
			var e map[string]string
			if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil {
				t.Fatal(err)
			}
			if e["error"] != tt.code || e["error_description"] == "" || e["request_id"] != w.Header().Get("X-Request-Id") {
				t.Fatalf("body %v, want error %s", e, tt.code)
			}
			if svc.got.SubjectToken != "" {
				t.Fatal("a bad request reached the service")
			}
		})
	}
}

func TestErrorMapping(t *testing.T) {
	tests := []struct {
		err        error
		status     int
		code       string
		retryAfter string
	}{
		{&exchange.Error{Code: exchange.CodeInvalidGrant, Description: "expired"}, 400, "invalid_grant", ""},
		{&exchange.Error{Code: exchange.CodeInvalidTarget, Description: "no"}, 400, "invalid_target", ""},
		{&exchange.Error{Code: exchange.CodeInvalidScope, Description: "no"}, 400, "invalid_scope", ""},
		{&exchange.Error{Code: exchange.CodeRateLimited, Description: "slow", RetryAfter: 1500 * time.Millisecond}, 429, "temporarily_unavailable", "2"},
		{&exchange.Error{Code: exchange.CodeUnavailable, Description: "down", RetryAfter: 5 * time.Second}, 503, "temporarily_unavailable", "5"},
		{&exchange.Error{Code: exchange.CodeServerError, Description: "bug"}, 500, "server_error", ""},
		{errors.New("glpat-leaked in a raw error"), 500, "server_error", ""},
	}
	for _, tt := range tests {
		t.Run(tt.code, func(t *testing.T) {
			w := post(t, Handler(Options{Service: &fakeService{err: tt.err}}), "/v1/token", validForm().Encode(), nil)
			if w.Code != tt.status || w.Header().Get("Retry-After") != tt.retryAfter {
				t.Fatalf("status %d Retry-After %q, want %d %q", w.Code, w.Header().Get("Retry-After"), tt.status, tt.retryAfter)
			}
			if !strings.Contains(w.Body.String(), `"error":"`+tt.code+`"`) || strings.Contains(w.Body.String(), "glpat-") {
				t.Fatalf("body %s", w.Body)
			}
		})
	}
}

func TestRevoke(t *testing.T) {
	svc := &fakeService{}
	h := Handler(Options{Service: svc})
	w := post(t, h, "/v1/revoke", "token=gldt-abc&token_type_hint=access_token", nil)
	if w.Code != 200 || len(svc.revoked) != 1 || svc.revoked[0] != "gldt-abc" {
		t.Fatalf("status %d, revoked %v", w.Code, svc.revoked)
	}
	if w := post(t, h, "/v1/revoke", "", nil); w.Code != 400 {
		t.Fatalf("revoke without token: %d", w.Code)
	}
}

func TestHealthReadyAndUnknown(t *testing.T) {
	ready := errors.New("keys not loaded")
	at := now
	h := Handler(Options{Service: &fakeService{}, Ready: func(context.Context) error { return ready }, Now: func() time.Time { return at }})
	get := func(path string) *httptest.ResponseRecorder {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, path, nil))
		return w
	}
	if w := get("/healthz"); w.Code != 200 {
		t.Fatalf("healthz %d", w.Code)
	}
	if w := get("/readyz"); w.Code != 503 || strings.Contains(w.Body.String(), "keys not loaded") {
		t.Fatalf("readyz %d %s", w.Code, w.Body)
	}
	ready = nil
	if w := get("/readyz"); w.Code != 503 {
		t.Fatalf("readyz %d within the failure's TTL", w.Code)
	}
	at = at.Add(failTTL)
	if w := get("/readyz"); w.Code != 200 {
		t.Fatalf("readyz %d", w.Code)
	}
	if w := get("/v1/token"); w.Code != http.StatusMethodNotAllowed {
		t.Fatalf("GET /v1/token: %d", w.Code)
	}
	if w := get("/nope"); w.Code != 404 {
		t.Fatalf("unknown path %d", w.Code)
	}
}

func TestUnixSocketPeerAndMode(t *testing.T) {
	dir, err := os.MkdirTemp("", "gl-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "x.sock")
	svc := &fakeService{}
	srv, err := Listen([]string{"unix://" + sock}, nil, Handler(Options{Service: svc}), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- srv.Serve(ctx, time.Second) }()
	fi, err := os.Stat(sock)
	if err != nil || fi.Mode().Perm() != 0o660 {
		t.Fatalf("socket mode %v, %v", fi.Mode(), err)
	}
	c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	resp, err := c.PostForm("http://gltoken/v1/token", validForm())
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if !strings.HasPrefix(svc.got.Peer, "uid=") || !strings.Contains(svc.got.Peer, " pid=") {
		t.Fatalf("peer = %q, want uid and pid", svc.got.Peer)
	}
	// A second daemon on the same socket is refused.
	if _, err := Listen([]string{"unix://" + sock}, nil, http.NotFoundHandler(), nil); err == nil {
		t.Fatal("a second listener took over a live socket")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Fatal("socket left behind after shutdown")
	}
}

func TestNonLoopbackTCPNeedsTLS(t *testing.T) {
	if _, err := Listen([]string{"tcp://0.0.0.0:0"}, nil, http.NotFoundHandler(), nil); err == nil || !strings.Contains(err.Error(), "TLS is required") {
		t.Fatalf("err = %v", err)
	}
	srv, err := Listen([]string{"tcp://127.0.0.1:0"}, nil, http.NotFoundHandler(), nil)
	if err != nil {
		t.Fatal(err)
	}
	srv.closeListeners()
}

// TestTLSClientCertificates: with client_ca_file set, a client without a
// certificate signed by that CA is refused; one with it is served and its
// certificate's common name is recorded as the peer.
func TestTLSClientCertificates(t *testing.T) {
	dir := t.TempDir()
	ca, caKey := newCA(t)
	serverCert, serverKey := issue(t, dir, "server", ca, caKey, x509.ExtKeyUsageServerAuth)
	clientCert, clientKey := issue(t, dir, "ci-runner-7", ca, caKey, x509.ExtKeyUsageClientAuth)
	caFile := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	svc := &fakeService{}
	srv, err := Listen([]string{"tcp://127.0.0.1:0"}, &TLSFiles{CertFile: serverCert, KeyFile: serverKey, ClientCAFile: caFile}, Handler(Options{Service: svc}), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = srv.Serve(ctx, time.Second) }()
	addr := "https://" + srv.Addrs()[0].String()
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	client := func(certs ...tls.Certificate) *http.Client {
		return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: certs}}}
	}
	if _, err := client().PostForm(addr+"/v1/token", validForm()); err == nil {
		t.Fatal("a client without a certificate was served")
	}
	kp, err := tls.LoadX509KeyPair(clientCert, clientKey)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := client(kp).PostForm(addr+"/v1/token", validForm())
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(svc.got.Peer, "cn=ci-runner-7") {
		t.Fatalf("status %d, peer %q", resp.StatusCode, svc.got.Peer)
	}
}

func newCA(t *testing.T) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(der)
	return ca, key
}

// issue writes a certificate and key for cn signed by ca and returns their paths.
func issue(t *testing.T, dir, cn string, ca *x509.Certificate, caKey *ecdsa.PrivateKey, usage x509.ExtKeyUsage) (string, string) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, ExtKeyUsage: []x509.ExtKeyUsage{usage}, KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(key)
	cert, keyFile := filepath.Join(dir, cn+".pem"), filepath.Join(dir, cn+".key")
	_ = os.WriteFile(cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
	_ = os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600)
	return cert, keyFile
}
