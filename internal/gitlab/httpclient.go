package gitlab

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"
)

// MaxResponse bounds what is read of any one GitLab answer (a page of tokens
// is a few tens of KiB; a JWKS a few KiB).
const MaxResponse = 8 << 20

// NewHTTPClient returns the HTTP client the daemon uses for GitLab (the API
// and the JWKS): bounded waits, a bounded answer size (MaxResponse) and, when
// caFile is set, the system roots plus the certificates in caFile.
func NewHTTPClient(caFile string) (*http.Client, error) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.ResponseHeaderTimeout = 20 * time.Second
	tr.MaxIdleConnsPerHost = 16
	if caFile != "" {
		pool, err := LoadCAPool(caFile)
		if err != nil {
			return nil, err
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	return &http.Client{Transport: LimitBodies(tr, MaxResponse), Timeout: 30 * time.Second}, nil
}

// LoadCAPool returns the system roots plus the PEM certificates in file.
func LoadCAPool(file string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s: no PEM certificate found", file)
	}
	return pool, nil
}

// LimitBodies wraps next so that reading a response body larger than max
// fails instead of holding it in memory.
func LimitBodies(next http.RoundTripper, max int64) http.RoundTripper {
	return limitBodies{next: next, max: max}
}

type limitBodies struct {
	next http.RoundTripper
	max  int64
}

func (l limitBodies) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := l.next.RoundTrip(r)
	if err == nil {
		resp.Body = &limitedBody{ReadCloser: resp.Body, max: l.max, left: l.max}
	}
	return resp, err
}

type limitedBody struct {
	io.ReadCloser
	max, left int64
}

func (b *limitedBody) Read(p []byte) (int, error) {
	if b.left <= 0 {
		return 0, fmt.Errorf("GitLab's answer is larger than %d bytes", b.max)
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.ReadCloser.Read(p)
	b.left -= int64(n)
	return n, err
}
