package gitlabfake

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

// hostClient is a client that reaches Options.Host the way the e2e tests'
// processes do: through ProxyURL, trusting only CACertPEM.
func hostClient(t *testing.T, s *Server) *http.Client {
	t.Helper()
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(s.CACertPEM()) {
		t.Fatal("CACertPEM holds no certificate")
	}
	proxy, err := url.Parse(s.ProxyURL())
	if err != nil {
		t.Fatal(err)
	}
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		Proxy:           http.ProxyURL(proxy),
		TLSClientConfig: &tls.Config{RootCAs: pool},
	}}
}

func TestHostServesTLSThroughProxy(t *testing.T) {
	s := Start(t, Options{Host: "gitlab.example.com"})
	if s.URL() != "https://gitlab.example.com" {
		t.Fatalf("URL() = %q", s.URL())
	}
	hc := hostClient(t, s)
	resp, err := hc.Get(s.URL() + "/.well-known/openid-configuration")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var doc struct {
		Issuer  string `json:"issuer"`
		JWKSURI string `json:"jwks_uri"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&doc); err != nil || resp.StatusCode != 200 {
		t.Fatalf("discovery: %d %v", resp.StatusCode, err)
	}
	if doc.Issuer != "https://gitlab.example.com" || doc.JWKSURI != "https://gitlab.example.com/oauth/discovery/keys" {
		t.Fatalf("discovery names %q / %q, want the https host", doc.Issuer, doc.JWKSURI)
	}

	// The loopback listener serves the same certificate (it names 127.0.0.1).
	direct := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: hc.Transport.(*http.Transport).TLSClientConfig}}
	resp, err = direct.Get(s.LoopbackURL() + "/oauth/discovery/keys")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.HasPrefix(s.LoopbackURL(), "https://127.0.0.1:") {
		t.Fatalf("loopback %s: %d", s.LoopbackURL(), resp.StatusCode)
	}

	// A client that does not trust the stand-in's CA is refused by TLS, not let through.
	if _, err := (&http.Client{Transport: &http.Transport{Proxy: hc.Transport.(*http.Transport).Proxy}}).Get(s.URL() + "/oauth/discovery/keys"); err == nil {
		t.Fatal("a client without the stand-in's CA got an answer")
	}
}

// TestHostProxyRefusesOtherDestinations: the proxy tunnels only HOST:443, so
// a client that sends anything else through it fails instead of reaching
// the network.
func TestHostProxyRefusesOtherDestinations(t *testing.T) {
	s := Start(t, Options{Host: "gitlab.example.com"})
	addr := strings.TrimPrefix(s.ProxyURL(), "http://")
	for _, tc := range []struct {
		request string
		status  int
	}{
		{"CONNECT example.org:443 HTTP/1.1\r\nHost: example.org:443\r\n\r\n", http.StatusForbidden},
		{"CONNECT gitlab.example.com:80 HTTP/1.1\r\nHost: gitlab.example.com:80\r\n\r\n", http.StatusForbidden},
		{"GET http://gitlab.example.com/ HTTP/1.1\r\nHost: gitlab.example.com\r\n\r\n", http.StatusMethodNotAllowed},
		{"CONNECT GitLab.Example.com:443 HTTP/1.1\r\nHost: GitLab.Example.com:443\r\n\r\n", http.StatusOK},
	} {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprint(c, tc.request)
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		c.Close()
		if err != nil {
			t.Fatalf("%q: %v", tc.request, err)
		}
		if resp.StatusCode != tc.status {
			t.Errorf("%q: %d, want %d", strings.SplitN(tc.request, "\r\n", 2)[0], resp.StatusCode, tc.status)
		}
	}
}

func TestHostMustBeAPlainHostName(t *testing.T) {
	for _, h := range []string{"gitlab.example.com:8443", "https://gitlab.example.com", "GitLab.example.com", "a b"} {
		if s, err := New(Options{Host: h}); err == nil {
			s.Close()
			t.Errorf("Host %q accepted", h)
		}
	}
	// Without Host nothing changes: plain http on loopback, no CA, no proxy.
	s := Start(t, Options{})
	if !strings.HasPrefix(s.URL(), "http://127.0.0.1:") || s.CACertPEM() != nil || s.ProxyURL() != "" || s.LoopbackURL() != s.URL() {
		t.Fatalf("plain stand-in: URL %q CA %v proxy %q", s.URL(), s.CACertPEM() != nil, s.ProxyURL())
	}
}

// TestTLSLoopback: Options.TLS alone serves https at the loopback URL, under a CA of its own,
// with no proxy: a client trusting CACertPEM gets GitLab's OIDC discovery with the https
// issuer, a client trusting only the system roots is refused the handshake, and the served
// certificate is ServerCertPEM's.
func TestTLSLoopback(t *testing.T) {
	s := Start(t, Options{TLS: true})
	if !strings.HasPrefix(s.URL(), "https://127.0.0.1:") || s.LoopbackURL() != s.URL() || s.ProxyURL() != "" {
		t.Fatalf("URL %s, loopback %s, proxy %q", s.URL(), s.LoopbackURL(), s.ProxyURL())
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(s.CACertPEM()) {
		t.Fatal("CACertPEM holds no certificate")
	}
	hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	resp, err := hc.Get(s.URL() + "/.well-known/openid-configuration")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var d struct {
		Issuer string `json:"issuer"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&d); err != nil || d.Issuer != s.URL() {
		t.Fatalf("discovery issuer %q, %v", d.Issuer, err)
	}
	certPEM, keyPEM := s.ServerCertPEM()
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil || !resp.TLS.PeerCertificates[0].Equal(leaf) {
		t.Fatalf("ServerCertPEM is not the served certificate: %v", err)
	}
	if _, err := (&http.Client{Timeout: 30 * time.Second}).Get(s.URL() + "/.well-known/openid-configuration"); err == nil {
		t.Fatal("a client without the stand-in's CA completed the handshake")
	}
	if c, k := Start(t, Options{}).ServerCertPEM(); c != nil || k != nil {
		t.Fatal("a plain stand-in has a certificate")
	}
}
