package client

import (
	"context"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

const idToken = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJwcm9qZWN0X3BhdGg6ZyJ9.c2lnbmF0dXJl"

// fakeDaemon records what it was sent and answers with handle.
type fakeDaemon struct {
	mu     sync.Mutex
	forms  []url.Values
	paths  []string
	handle func(w http.ResponseWriter, r *http.Request)
}

func (f *fakeDaemon) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		http.Error(w, err.Error(), 400)
		return
	}
	f.mu.Lock()
	f.forms = append(f.forms, r.PostForm)
	f.paths = append(f.paths, r.Method+" "+r.Host+" "+r.URL.Path+" "+r.Header.Get("Content-Type"))
	f.mu.Unlock()
	f.handle(w, r)
}

func tokenOK(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Request-Id", "req-1")
	io.WriteString(w, `{"access_token":"gldt-secret","issued_token_type":"urn:ietf:params:oauth:token-type:access_token","token_type":"N_A","expires_in":3599,"scope":"read_repository","username":"gitlab+deploy-token-42"}`)
}

// unixServer serves h on a Unix socket and returns its daemon URL.
func unixServer(t testing.TB, h http.Handler) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "glc") // t.TempDir can exceed the socket path limit
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "d.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return "unix://" + sock
}

func TestNew(t *testing.T) {
	tests := []struct {
		daemon  string
		wantErr error
	}{
		{"unix:///run/gltoken/exchanged.sock", nil},
		{"https://gltoken.example.com", nil},
		{"https://gltoken.example.com:8638/prefix/", nil},
		{"http://127.0.0.1:8638", nil},
		{"http://127.9.9.9:8638", nil},
		{"http://[::1]:8638", nil},
		{"http://localhost:8638", nil},
		{"http://gltoken.example.com:8638", ErrInsecureDaemon},
		{"http://10.1.2.3:8638", ErrInsecureDaemon},
		{"http://[2001:db8::1]:8638", ErrInsecureDaemon},
		{"http://localhost.evil.example:8638", ErrInsecureDaemon},
		{"unix://relative/path.sock", ErrBadDaemon},
		{"unix:relative.sock", ErrBadDaemon},
		{"ftp://gltoken.example.com", ErrBadDaemon},
		{"https://user:pw@gltoken.example.com", ErrBadDaemon},
		{"https://gltoken.example.com/?x=1", ErrBadDaemon},
		{"https://", ErrBadDaemon},
		{"/run/gltoken/exchanged.sock", ErrBadDaemon},
		{"", ErrBadDaemon},
	}
	for _, tt := range tests {
		t.Run(tt.daemon, func(t *testing.T) {
			_, err := New(tt.daemon, Options{})
			if tt.wantErr == nil && err != nil {
				t.Fatalf("New: %v", err)
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Fatalf("New error = %v, want %v", err, tt.wantErr)
			}
		})
	}
}

func TestNewRefusesHTTPClientForUnixAndHTTP(t *testing.T) {
	for _, d := range []string{"unix:///x.sock", "http://127.0.0.1:1"} {
		if _, err := New(d, Options{HTTPClient: http.DefaultClient}); err == nil {
			t.Errorf("New(%s) with HTTPClient: no error", d)
		}
		// A CA file set for all daemons (GLTOKEN_CA_FILE) does not get in the way.
		if _, err := New(d, Options{CAFile: "/nonexistent/ca.pem"}); err != nil {
			t.Errorf("New(%s) with CAFile: %v", d, err)
		}
	}
}

func TestExchangeOverUnixSocket(t *testing.T) {
	fd := &fakeDaemon{handle: tokenOK}
	c, err := New(unixServer(t, fd), Options{UserAgent: "test/1"})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Unix(1700000000, 0)
	c.now = func() time.Time { return now }
	tok, err := c.Exchange(context.Background(), idToken, "https://gitlab.example.com/platform/lib.git", []string{"read_repository", "read_registry"})
	if err != nil {
		t.Fatalf("Exchange: %v", err)
	}
	want := Token{AccessToken: "gldt-secret", Username: "gitlab+deploy-token-42", Scope: "read_repository", ExpiresIn: 3599, ExpiresAt: now.Add(3599 * time.Second), RequestID: "req-1"}
	if *tok != want {
		t.Fatalf("token = %+v, want %+v", *tok, want)
	}
	if got := fd.paths[0]; got != "POST gltoken /v1/token application/x-www-form-urlencoded" {
		t.Errorf("request = %q", got)
	}
	wantForm := url.Values{
		"grant_type":         {"urn:ietf:params:oauth:grant-type:token-exchange"},
		"subject_token":      {idToken},
		"subject_token_type": {"urn:ietf:params:oauth:token-type:jwt"},
		"resource":           {"https://gitlab.example.com/platform/lib.git"},
		"scope":              {"read_repository read_registry"},
	}
	if fmt.Sprint(fd.forms[0]) != fmt.Sprint(wantForm) {
		t.Errorf("form = %v, want %v", fd.forms[0], wantForm)
	}
}

func TestExchangeOverLoopbackHTTP(t *testing.T) {
	fd := &fakeDaemon{handle: tokenOK}
	srv := httptest.NewServer(fd)
	t.Cleanup(srv.Close)
	c, err := New(srv.URL, Options{})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := c.Exchange(context.Background(), idToken, "https://h/g/p.git", nil)
	if err != nil {
		t.Fatalf("Exchange: %v", err)
	}
	if tok.AccessToken != "gldt-secret" {
		t.Fatalf("token = %+v", tok)
	}
	if _, ok := fd.forms[0]["scope"]; ok {
		t.Errorf("scope sent without scopes: %v", fd.forms[0])
	}
}

func TestExchangeOverLocalhostName(t *testing.T) {
	fd := &fakeDaemon{handle: tokenOK}
	srv := httptest.NewServer(fd)
	t.Cleanup(srv.Close)
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	c, err := New("http://localhost:"+port, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Exchange(context.Background(), idToken, "https://h/g/p.git", nil); err != nil {
		t.Fatalf("Exchange via localhost: %v", err)
	}
}

func TestExchangeOverHTTPSWithCAFile(t *testing.T) {
	fd := &fakeDaemon{handle: tokenOK}
	srv := httptest.NewTLSServer(fd)
	t.Cleanup(srv.Close)

	// Without the CA the certificate is unknown, and the error says what to do.
	c, err := New(srv.URL, Options{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Exchange(context.Background(), idToken, "https://h/g/p.git", nil)
	var te *TransportError
	if !errors.As(err, &te) || !strings.Contains(err.Error(), "GLTOKEN_CA_FILE") {
		t.Fatalf("Exchange without CA: %v", err)
	}

	ca := filepath.Join(t.TempDir(), "ca.pem")
	pemBytes := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	if err := os.WriteFile(ca, pemBytes, 0o600); err != nil {
		t.Fatal(err)
	}
	c, err = New(srv.URL, Options{CAFile: ca})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Exchange(context.Background(), idToken, "https://h/g/p.git", nil); err != nil {
		t.Fatalf("Exchange with CA: %v", err)
	}

	// An injected client is used as is.
	c, err = New(srv.URL, Options{HTTPClient: srv.Client()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Exchange(context.Background(), idToken, "https://h/g/p.git", nil); err != nil {
		t.Fatalf("Exchange with HTTPClient: %v", err)
	}
}

func TestNewBadCAFile(t *testing.T) {
	f := filepath.Join(t.TempDir(), "ca.pem")
	os.WriteFile(f, []byte("not a cert"), 0o600)
	if _, err := New("https://d.example.com", Options{CAFile: f}); err == nil {
		t.Fatal("New with a CA file without certificates: no error")
	}
	if _, err := New("https://d.example.com", Options{CAFile: f + ".missing"}); err == nil {
		t.Fatal("New with a missing CA file: no error")
	}
}

func TestExchangeErrors(t *testing.T) {
	tests := []struct {
		name    string
		handle  func(w http.ResponseWriter, r *http.Request)
		want    *Error // nil: a non-*Error
		wantMsg string
	}{
		{
			name: "denial with header request id",
			handle: func(w http.ResponseWriter, _ *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				w.Header().Set("X-Request-Id", "r-42")
				w.WriteHeader(400)
				io.WriteString(w, `{"error":"invalid_target","error_description":"no rule allows platform/app to read platform/secret"}`)
			},
			want:    &Error{Status: 400, Code: "invalid_target", Description: "no rule allows platform/app to read platform/secret", RequestID: "r-42"},
			wantMsg: "the daemon refused (invalid_target): no rule allows platform/app to read platform/secret (request id r-42)",
		},
		{
			name: "request id in JSON only, description on one line",
			handle: func(w http.ResponseWriter, _ *http.Request) {
				w.Header().Set("Content-Type", "application/json; charset=utf-8")
				w.WriteHeader(400)
				io.WriteString(w, `{"error":"invalid_grant","error_description":"ID token expired\nat 12:00","request_id":"j-7"}`)
			},
			want: &Error{Status: 400, Code: "invalid_grant", Description: "ID token expired at 12:00", RequestID: "j-7"},
		},
		{
			name: "rate limited",
			handle: func(w http.ResponseWriter, _ *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				w.Header().Set("Retry-After", "7")
				w.WriteHeader(429)
				io.WriteString(w, `{"error":"slow_down","error_description":"too many requests"}`)
			},
			want:    &Error{Status: 429, Code: "slow_down", Description: "too many requests", RetryAfter: 7 * time.Second},
			wantMsg: "the daemon refused (slow_down): too many requests; retry after 7s",
		},
		{
			name: "proxy error page",
			handle: func(w http.ResponseWriter, _ *http.Request) {
				w.Header().Set("Content-Type", "text/html")
				w.WriteHeader(502)
				io.WriteString(w, "<html>bad gateway</html>")
			},
			want:    &Error{Status: 502},
			wantMsg: "the daemon refused with HTTP 502 Bad Gateway",
		},
		{
			name: "missing expires_in",
			handle: func(w http.ResponseWriter, _ *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				io.WriteString(w, `{"access_token":"gldt-secret","username":"u"}`)
			},
		},
		{
			name: "fractional expires_in",
			handle: func(w http.ResponseWriter, _ *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				io.WriteString(w, `{"access_token":"gldt-secret","username":"u","expires_in":1.5}`)
			},
		},
		{
			name: "no username",
			handle: func(w http.ResponseWriter, _ *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				io.WriteString(w, `{"access_token":"gldt-secret","expires_in":60}`)
			},
		},
		{
			name: "malformed JSON quoting the secret",
			handle: func(w http.ResponseWriter, _ *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				io.WriteString(w, `{"access_token":"gldt-secret" "username":"u"}`)
			},
		},
		{
			name: "not JSON",
			handle: func(w http.ResponseWriter, _ *http.Request) {
				w.Header().Set("Content-Type", "text/plain")
				io.WriteString(w, `gldt-secret`)
			},
		},
		{
			name: "oversized answer",
			handle: func(w http.ResponseWriter, _ *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				io.WriteString(w, `{"access_token":"`+strings.Repeat("a", MaxResponse)+`"}`)
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := New(unixServer(t, &fakeDaemon{handle: tt.handle}), Options{})
			if err != nil {
				t.Fatal(err)
			}
			_, err = c.Exchange(context.Background(), idToken, "https://h/g/p.git", nil)
			if err == nil {
				t.Fatal("Exchange: no error")
			}
			msg := err.Error()
			if strings.ContainsAny(msg, "\r\n") {
				t.Errorf("error is not one line: %q", msg)
			}
			if strings.Contains(msg, idToken) || strings.Contains(msg, "gldt-secret") {
				t.Errorf("error contains a secret: %q", msg)
			}
			var e *Error
			if tt.want == nil {
				if errors.As(err, &e) {
					t.Fatalf("got *Error %+v, want another error", e)
				}
				if !errors.Is(err, ErrBadResponse) {
					t.Errorf("error = %v, want ErrBadResponse", err)
				}
				return
			}
			if !errors.As(err, &e) {
				t.Fatalf("error %v is not *Error", err)
			}
			if *e != *tt.want {
				t.Errorf("Error = %+v, want %+v", *e, *tt.want)
			}
			if tt.wantMsg != "" && msg != tt.wantMsg {
				t.Errorf("Error() = %q, want %q", msg, tt.wantMsg)
			}
		})
	}
}

func TestExchangeDoesNotFollowRedirects(t *testing.T) {
	elsewhere := &fakeDaemon{handle: tokenOK}
	other := httptest.NewServer(elsewhere)
	t.Cleanup(other.Close)
	c, err := New(unixServer(t, &fakeDaemon{handle: func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, other.URL+"/v1/token", http.StatusTemporaryRedirect)
	}}), Options{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Exchange(context.Background(), idToken, "https://h/g/p.git", nil)
	var e *Error
	if !errors.As(err, &e) || e.Status != http.StatusTemporaryRedirect {
		t.Fatalf("Exchange = %v, want *Error 307", err)
	}
	if len(elsewhere.forms) != 0 {
		t.Fatalf("the redirect target got %d requests", len(elsewhere.forms))
	}
}

func TestTransportErrors(t *testing.T) {
	dir, _ := os.MkdirTemp("", "glc")
	t.Cleanup(func() { os.RemoveAll(dir) })
	daemon := "unix://" + filepath.Join(dir, "missing.sock")
	c, err := New(daemon, Options{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Exchange(context.Background(), idToken, "https://h/g/p.git", nil)
	var te *TransportError
	if !errors.As(err, &te) {
		t.Fatalf("error = %v, want *TransportError", err)
	}
	msg := err.Error()
	for _, want := range []string{daemon, "exchanged is running"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q does not mention %q", msg, want)
		}
	}
	if strings.Contains(msg, idToken) || strings.ContainsAny(msg, "\n") {
		t.Errorf("bad error %q", msg)
	}

	// Nothing listens on this loopback port.
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := l.Addr().String()
	l.Close()
	c, _ = New("http://"+addr, Options{})
	err = c.Revoke(context.Background(), "gldt-secret")
	if !errors.As(err, &te) || strings.Contains(err.Error(), "gldt-secret") {
		t.Fatalf("Revoke error = %v", err)
	}
}

func TestRevoke(t *testing.T) {
	fd := &fakeDaemon{handle: func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(200) }}
	c, err := New(unixServer(t, fd), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Revoke(context.Background(), "gldt-secret"); err != nil {
		t.Fatalf("Revoke: %v", err)
	}
	if fd.paths[0] != "POST gltoken /v1/revoke application/x-www-form-urlencoded" || fmt.Sprint(fd.forms[0]) != fmt.Sprint(url.Values{"token": {"gldt-secret"}}) {
		t.Fatalf("revoke sent %q %v", fd.paths[0], fd.forms[0])
	}

	fd.handle = func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(503)
		io.WriteString(w, `{"error":"temporarily_unavailable","error_description":"GitLab unreachable"}`)
	}
	err = c.Revoke(context.Background(), "gldt-secret")
	var e *Error
	if !errors.As(err, &e) || e.Code != "temporarily_unavailable" {
		t.Fatalf("Revoke = %v", err)
	}
}
