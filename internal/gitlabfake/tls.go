package gitlabfake

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"
)

// A GitLab at https://HOST, with no port: Options.Host.
//
// Some clients cannot be pointed at a port. A Go module path has none (go
// fetches https://HOST/PATH?go-get=1, always on port 443), and the path a
// module is imported by is the path it is served at. For those, the stand-in
// serves TLS with a certificate for HOST (and 127.0.0.1) signed by a CA it
// makes for itself, and runs a second listener, an HTTP CONNECT proxy that
// takes HOST:443 (and nothing else) to it. A client given
//
//	https_proxy=<ProxyURL()>               the proxy: HOST resolves, as DNS would make it
//	SSL_CERT_FILE=<CACertPEM in a file>    Go programs (go, exchanged, git-lfs)
//	GIT_SSL_CAINFO=<the same file>         git (curl)
//
// talks to https://HOST exactly as it would to a GitLab with a private CA:
// real TLS, the certificate checked against the host name. Nothing about the
// client is switched to an insecure mode (no GOINSECURE, no http.sslVerify
// false). Go programs never send a loopback address through a proxy, so the
// stand-in's own loopback URL keeps working next to it.
//
// Options.TLS alone serves the same kind of certificate (for localhost and
// 127.0.0.1) on the loopback URL, https://127.0.0.1:PORT, with no host name
// and no proxy: enough for clients that take a port, such as registry clients
// fetching tokens from the realm, which GitLab serves over https.

// tlsState is the TLS side of a Server started with Options.Host or Options.TLS.
type tlsState struct {
	host            string // "" with Options.TLS alone
	caPEM           []byte
	certPEM, keyPEM []byte
	proxyLn         net.Listener // nil with Options.TLS alone
	target          string       // the TLS listener, 127.0.0.1:PORT

	mu     sync.Mutex
	open   map[net.Conn]bool // client connections, closed by closeTLS
	closed bool
	conns  sync.WaitGroup
}

// setupTLS wraps the listener in TLS, and starts the CONNECT proxy when
// Options.Host is set. It runs in New before the server serves.
func (s *Server) setupTLS() error {
	host := s.opts.Host
	if host == "" && !s.opts.TLS {
		return nil
	}
	if host != "" && (strings.ContainsAny(host, ":/ @") || host != strings.ToLower(host)) {
		return fmt.Errorf("gitlabfake: Options.Host %q: want a lower-case host name without port, e.g. gitlab.example.com", host)
	}
	certHost := host
	if certHost == "" {
		certHost = "localhost"
	}
	caPEM, certPEM, keyPEM, err := newServerCert(certHost)
	if err != nil {
		return err
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return fmt.Errorf("gitlabfake: TLS certificate: %w", err)
	}
	t := &tlsState{host: host, caPEM: caPEM, certPEM: certPEM, keyPEM: keyPEM, target: s.ln.Addr().String(), open: map[net.Conn]bool{}}
	s.ln = tls.NewListener(s.ln, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
	s.tls = t
	if host == "" {
		s.url = "https://" + t.target
		return nil
	}
	if t.proxyLn, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
		return fmt.Errorf("gitlabfake: proxy listen: %w", err)
	}
	s.url = "https://" + host
	go t.serveProxy()
	return nil
}

// tlsErrorLog is the http.Server's error log with TLS: a client that does not
// trust the CA fails its handshake, which is for the client to report, not
// for the stand-in to print on a test's stderr. With Options.Logf it goes there.
func (s *Server) tlsErrorLog() *log.Logger {
	if s.opts.Logf == nil {
		return log.New(io.Discard, "", 0)
	}
	logf := s.opts.Logf
	return log.New(logfWriter(func(line string) { logf("%s", line) }), "", 0)
}

// logfWriter hands each write, a log line, to its function.
type logfWriter func(line string)

func (f logfWriter) Write(p []byte) (int, error) {
	f(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func (s *Server) closeTLS() {
	if s.tls == nil {
		return
	}
	t := s.tls
	if t.proxyLn != nil {
		_ = t.proxyLn.Close()
	}
	t.mu.Lock()
	t.closed = true
	for c := range t.open {
		_ = c.Close()
	}
	t.mu.Unlock()
	t.conns.Wait()
}

// CACertPEM is the PEM certificate of the CA that signed the stand-in's TLS
// certificate (Options.Host or Options.TLS), for SSL_CERT_FILE, GIT_SSL_CAINFO,
// gitlab.ca_file or skopeo's --cert-dir. Nil without TLS.
func (s *Server) CACertPEM() []byte {
	if s.tls == nil {
		return nil
	}
	return append([]byte(nil), s.tls.caPEM...)
}

// ServerCertPEM is the stand-in's TLS certificate and its private key, PEM (nil
// without TLS). The certificate names 127.0.0.1 and localhost (and
// Options.Host), any port, so a registry tried by hand next to the stand-in may
// serve https with it too.
func (s *Server) ServerCertPEM() (cert, key []byte) {
	if s.tls == nil {
		return nil, nil
	}
	return append([]byte(nil), s.tls.certPEM...), append([]byte(nil), s.tls.keyPEM...)
}

// ProxyURL is the CONNECT proxy that takes Options.Host:443 to the stand-in
// ("http://127.0.0.1:PORT"), for clients' https_proxy. Empty without
// Options.Host.
func (s *Server) ProxyURL() string {
	if s.tls == nil || s.tls.proxyLn == nil {
		return ""
	}
	return "http://" + s.tls.proxyLn.Addr().String()
}

// LoopbackURL is where the stand-in listens, "http(s)://127.0.0.1:PORT";
// with Options.Host it serves the same certificate there (it names
// 127.0.0.1 too). Without Options.Host it equals URL().
func (s *Server) LoopbackURL() string {
	if s.tls == nil {
		return s.url
	}
	return "https://" + s.tls.target
}

func (t *tlsState) serveProxy() {
	for {
		c, err := t.proxyLn.Accept()
		if err != nil {
			return
		}
		t.mu.Lock()
		if t.closed {
			t.mu.Unlock()
			_ = c.Close()
			return
		}
		t.open[c] = true
		t.conns.Add(1)
		t.mu.Unlock()
		go func() {
			defer t.conns.Done()
			t.tunnel(c)
			t.mu.Lock()
			delete(t.open, c)
			t.mu.Unlock()
		}()
	}
}

// tunnel answers one proxy connection: CONNECT HOST:443 is joined to the
// TLS listener; anything else is refused, so a client that leaks another
// destination into the proxy fails loudly instead of reaching the network.
func (t *tlsState) tunnel(c net.Conn) {
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	req, err := http.ReadRequest(br)
	if err != nil {
		return
	}
	_ = c.SetReadDeadline(time.Time{})
	refuse := func(status int, msg string) {
		_, _ = fmt.Fprintf(c, "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s", status, http.StatusText(status), len(msg), msg)
	}
	if req.Method != http.MethodConnect {
		refuse(http.StatusMethodNotAllowed, "stand-in proxy: only CONNECT "+t.host+":443\n")
		return
	}
	if !strings.EqualFold(req.Host, t.host+":443") {
		refuse(http.StatusForbidden, "stand-in proxy: "+req.Host+" is not served here (only "+t.host+":443)\n")
		return
	}
	up, err := net.DialTimeout("tcp", t.target, 10*time.Second)
	if err != nil {
		refuse(http.StatusBadGateway, "stand-in proxy: "+err.Error()+"\n")
		return
	}
	defer up.Close()
	if _, err := io.WriteString(c, "HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
		return
	}
	done := make(chan struct{}, 2)
	go func() {
		// Bytes the client sent after its CONNECT are already in br.
		_, _ = io.Copy(up, br)
		if tc, ok := up.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
		done <- struct{}{}
	}()
	go func() {
		_, _ = io.Copy(c, up)
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
		done <- struct{}{}
	}()
	<-done
	<-done
}

// newServerCert makes a CA and a certificate for host, 127.0.0.1 and
// localhost signed by it, all PEM. ECDSA P-256: fast enough to make per test.
func newServerCert(host string) (caPEM, certPEM, keyPEM []byte, err error) {
	fail := func(err error) ([]byte, []byte, []byte, error) {
		return nil, nil, nil, fmt.Errorf("gitlabfake: TLS certificate: %w", err)
	}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fail(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "GitLab stand-in CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.AddDate(1, 0, 0),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return fail(err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return fail(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fail(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: host},
		NotBefore: now.Add(-time.Hour), NotAfter: now.AddDate(1, 0, 0),
		DNSNames: []string{host, "localhost"}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return fail(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return fail(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), nil
}
