// Package client is the gltoken daemon's client: New connects to exchanged over
// its Unix socket, over HTTPS, or over plain HTTP on loopback only; Exchange
// trades a GitLab CI/CD ID token for a short-lived credential (RFC 8693) and
// Revoke drops one (RFC 7009). No error it returns ever contains a secret.
package client

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"gltoken.dev/gltoken/internal/loopback"
)

// The RFC 8693 names this client sends.
const (
	GrantTypeTokenExchange = "urn:ietf:params:oauth:grant-type:token-exchange"
	TokenTypeJWT           = "urn:ietf:params:oauth:token-type:jwt"
)

const (
	// DefaultTimeout bounds one request when Options.Timeout is zero.
	DefaultTimeout = 30 * time.Second
	// MaxResponse is the largest response body read from the daemon.
	MaxResponse = 1 << 20
	unixHost    = "gltoken" // the Host of HTTP requests over a Unix socket
)

var (
	// ErrInsecureDaemon: a plain-http daemon URL whose host is not loopback.
	// The ID token MUST NOT cross a network in clear.
	ErrInsecureDaemon = errors.New("plain http is allowed only to a loopback daemon (127.0.0.1, [::1], localhost); use https:// or unix://")
	// ErrBadDaemon: the daemon URL is not unix:///path, https://host[:port] or http://loopback:port.
	ErrBadDaemon = errors.New("daemon must be unix:///path/to/socket, https://host[:port] or http://127.0.0.1:port")
	// ErrBadResponse: the daemon answered something that is not its API.
	ErrBadResponse = errors.New("unexpected answer from the daemon")
)

// Options configures a Client. The zero value is fine.
type Options struct {
	// CAFile is a PEM bundle trusted, besides the system roots, for an https
	// daemon; it is ignored for the others.
	CAFile string
	// HTTPClient, if set, is used for an https daemon (its redirects are never
	// followed). It is refused for unix:// and http:// daemons, whose transports
	// this package builds itself to enforce the socket and loopback rules.
	HTTPClient *http.Client
	// UserAgent is sent with every request.
	UserAgent string
	// Timeout bounds each request (DefaultTimeout when zero).
	Timeout time.Duration
}

// Client talks to one daemon. It is safe for concurrent use.
type Client struct {
	daemon string // as configured, for messages
	base   string // scheme://host[/prefix] requests are built on
	hc     *http.Client
	ua     string
	now    func() time.Time
}

// Token is a minted credential.
type Token struct {
	AccessToken string // the secret
	Username    string // the git/registry login that goes with it
	Scope       string
	AccessLevel int       // an access token's role (30 developer, 40 maintainer); 0 for deploy tokens
	ExpiresIn   int64     // seconds, as the daemon said
	ExpiresAt   time.Time // the client's clock at receipt + ExpiresIn
	RequestID   string    // the daemon's X-Request-Id, if any
}

// Error is the daemon's refusal (RFC 6749 section 5.2 shape) or any non-200
// answer. Description is sanitised to one printable line.
type Error struct {
	Status      int
	Code        string // invalid_grant, invalid_target, …; empty if the body was not the API's
	Description string
	RequestID   string
	RetryAfter  time.Duration // from Retry-After on 429/503, if given
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("the daemon refused")
	if e.Code != "" {
		b.WriteString(" (" + e.Code + ")")
	} else {
		fmt.Fprintf(&b, " with HTTP %d %s", e.Status, http.StatusText(e.Status))
	}
	if e.Description != "" {
		b.WriteString(": " + e.Description)
	}
	if e.RetryAfter > 0 {
		fmt.Fprintf(&b, "; retry after %s", e.RetryAfter)
	}
	if e.RequestID != "" {
		b.WriteString(" (request id " + e.RequestID + ")")
	}
	return b.String()
}

// TransportError: the daemon could not be reached or the exchange broke off.
type TransportError struct {
	Daemon string
	Err    error
}

func (e *TransportError) Error() string {
	return fmt.Sprintf("cannot reach the gltoken daemon at %s: %v; %s", e.Daemon, e.Err, e.hint())
}

func (e *TransportError) Unwrap() error { return e.Err }

func (e *TransportError) hint() string {
	var (
		unknownAuthority x509.UnknownAuthorityError
		hostname         x509.HostnameError
		certInvalid      x509.CertificateInvalidError
	)
	switch {
	case errors.Is(e.Err, os.ErrNotExist) || errors.Is(e.Err, syscall.ENOENT):
		return "check that exchanged is running and that the daemon URL (--daemon, GLTOKEN_DAEMON) names its socket"
	case errors.Is(e.Err, os.ErrPermission) || errors.Is(e.Err, syscall.EACCES):
		return "check that this user may open the socket (its group and mode)"
	case errors.Is(e.Err, syscall.ECONNREFUSED):
		return "check that exchanged is running and listening on that address"
	case errors.As(e.Err, &unknownAuthority) || errors.As(e.Err, &certInvalid):
		return "check the daemon's certificate, or point GLTOKEN_CA_FILE at the CA that signed it"
	case errors.As(e.Err, &hostname):
		return "check that the daemon URL's host name matches the daemon's certificate"
	case errors.Is(e.Err, context.DeadlineExceeded) || isTimeout(e.Err):
		return "the daemon did not answer in time; check that it is up and reachable"
	}
	return "check the daemon URL (--daemon, GLTOKEN_DAEMON) and that exchanged is running"
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// New returns a client for daemon: unix:///path/to/socket, https://host[:port]
// (optionally with a path prefix), or http:// to 127.0.0.1, [::1] or localhost.
func New(daemon string, opts Options) (*Client, error) {
	u, err := url.Parse(daemon)
	if err != nil {
		return nil, fmt.Errorf("daemon %q: %w", daemon, ErrBadDaemon)
	}
	if u.User != nil || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "" {
		return nil, fmt.Errorf("daemon %q: %w", daemon, ErrBadDaemon)
	}
	timeout := opts.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	c := &Client{daemon: daemon, ua: opts.UserAgent, now: time.Now}
	if c.ua == "" {
		c.ua = "gltoken-client"
	}
	var hc *http.Client
	switch u.Scheme {
	case "unix":
		if u.Host != "" || !strings.HasPrefix(u.Path, "/") {
			return nil, fmt.Errorf("daemon %q: the socket path must be absolute (unix:///path/to/socket): %w", daemon, ErrBadDaemon)
		}
		if opts.HTTPClient != nil {
			return nil, fmt.Errorf("daemon %q: the HTTPClient option applies to https daemons only", daemon)
		}
		sock := u.Path
		d := &net.Dialer{}
		hc = &http.Client{Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return d.DialContext(ctx, "unix", sock)
			},
			MaxIdleConns:    2,
			IdleConnTimeout: 30 * time.Second,
		}}
		c.base = "http://" + unixHost
	case "http":
		if !loopback.Host(u.Hostname()) {
			return nil, fmt.Errorf("daemon %q: %w", daemon, ErrInsecureDaemon)
		}
		if opts.HTTPClient != nil {
			return nil, fmt.Errorf("daemon %q: the HTTPClient option applies to https daemons only", daemon)
		}
		d := &net.Dialer{}
		hc = &http.Client{Transport: &http.Transport{
			Proxy: nil, // never through a proxy in clear
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				conn, err := d.DialContext(ctx, network, addr)
				if err != nil {
					return nil, err
				}
				// "localhost" is resolved by the system: make sure it was loopback.
				if ta, ok := conn.RemoteAddr().(*net.TCPAddr); !ok || !ta.IP.IsLoopback() {
					conn.Close()
					return nil, ErrInsecureDaemon
				}
				return conn, nil
			},
			MaxIdleConns:    2,
			IdleConnTimeout: 30 * time.Second,
		}}
		c.base = "http://" + u.Host + strings.TrimSuffix(u.Path, "/")
	case "https":
		if u.Host == "" {
			return nil, fmt.Errorf("daemon %q: %w", daemon, ErrBadDaemon)
		}
		if opts.HTTPClient != nil {
			cp := *opts.HTTPClient
			hc = &cp
		} else {
			tr := http.DefaultTransport.(*http.Transport).Clone()
			tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
			hc = &http.Client{Transport: tr}
		}
		if opts.CAFile != "" {
			tr, ok := hc.Transport.(*http.Transport)
			if !ok {
				if hc.Transport != nil {
					return nil, errors.New("CAFile needs an *http.Transport")
				}
				tr = http.DefaultTransport.(*http.Transport).Clone()
			} else {
				tr = tr.Clone()
			}
			pool, err := loadCA(opts.CAFile)
			if err != nil {
				return nil, err
			}
			if tr.TLSClientConfig == nil {
				tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
			}
			tr.TLSClientConfig.RootCAs = pool
			hc.Transport = tr
		}
		c.base = "https://" + u.Host + strings.TrimSuffix(u.Path, "/")
	default:
		return nil, fmt.Errorf("daemon %q: %w", daemon, ErrBadDaemon)
	}
	// The ID token is in the body: a redirect MUST NOT carry it anywhere else.
	hc.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	hc.Timeout = timeout
	c.hc = hc
	return c, nil
}

func loadCA(file string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("read CA file: %w", err)
	}
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("CA file %s: no PEM certificate in it", file)
	}
	return pool, nil
}

// Close releases the client's idle connections.
func (c *Client) Close() { c.hc.CloseIdleConnections() }

// Daemon is the daemon URL the client was made for.
func (c *Client) Daemon() string { return c.daemon }

// Exchange trades idToken for a credential for resource (the repository or
// registry repository URL) with scopes.
func (c *Client) Exchange(ctx context.Context, idToken, resource string, scopes []string) (*Token, error) {
	return c.ExchangeFor(ctx, idToken, []string{resource}, scopes)
}

// ExchangeFor trades idToken for one credential valid at every resource
// (one resource parameter each, RFC 8693 section 2.1): a registry login for
// the repositories of several projects.
func (c *Client) ExchangeFor(ctx context.Context, idToken string, resources, scopes []string) (*Token, error) {
	if idToken == "" {
		return nil, errors.New("exchange: empty ID token")
	}
	if len(resources) == 0 {
		return nil, errors.New("exchange: no resource")
	}
	form := url.Values{
		"grant_type":         {GrantTypeTokenExchange},
		"subject_token":      {idToken},
		"subject_token_type": {TokenTypeJWT},
		"resource":           resources,
	}
	if len(scopes) > 0 {
		form.Set("scope", strings.Join(scopes, " "))
	}
	resp, body, err := c.post(ctx, "/v1/token", form)
	if err != nil {
		return nil, err
	}
	received := c.now()
	reqID := resp.Header.Get("X-Request-Id")
	var r struct {
		AccessToken     string      `json:"access_token"`
		IssuedTokenType string      `json:"issued_token_type"`
		TokenType       string      `json:"token_type"`
		ExpiresIn       json.Number `json:"expires_in"`
		Scope           string      `json:"scope"`
		Username        string      `json:"username"`
		AccessLevel     int         `json:"access_level"`
	}
	if err := decodeJSON(resp, body, &r); err != nil {
		return nil, fmt.Errorf("token answer: %w (request id %s)", err, orNone(reqID))
	}
	if r.AccessToken == "" || r.Username == "" {
		return nil, fmt.Errorf("%w: token answer without access_token or username (request id %s)", ErrBadResponse, orNone(reqID))
	}
	secs, err := strconv.ParseInt(string(r.ExpiresIn), 10, 64)
	if err != nil || secs <= 0 {
		return nil, fmt.Errorf("%w: token answer without a positive integer expires_in (request id %s)", ErrBadResponse, orNone(reqID))
	}
	return &Token{
		AccessToken: r.AccessToken,
		Username:    r.Username,
		Scope:       r.Scope,
		AccessLevel: r.AccessLevel,
		ExpiresIn:   secs,
		ExpiresAt:   received.Add(time.Duration(secs) * time.Second),
		RequestID:   sanitize(reqID, 128),
	}, nil
}

// Revoke asks the daemon to revoke secret now (RFC 7009). The daemon answers
// 200 whether or not it knew the token.
func (c *Client) Revoke(ctx context.Context, secret string) error {
	if secret == "" {
		return errors.New("revoke: empty token")
	}
	_, _, err := c.post(ctx, "/v1/revoke", url.Values{"token": {secret}})
	return err
}

// post sends form and returns a 200 response with its body, or an error.
func (c *Client) post(ctx context.Context, path string, form url.Values) (*http.Response, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+path, strings.NewReader(form.Encode()))
	if err != nil {
		return nil, nil, fmt.Errorf("daemon %s: %w", c.daemon, err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", c.ua)
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, nil, &TransportError{Daemon: c.daemon, Err: stripURL(err)}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxResponse+1))
	if err != nil {
		return nil, nil, &TransportError{Daemon: c.daemon, Err: fmt.Errorf("read answer: %w", err)}
	}
	if len(body) > MaxResponse {
		return nil, nil, fmt.Errorf("%w: answer larger than %d bytes", ErrBadResponse, MaxResponse)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, nil, parseError(resp, body)
	}
	return resp, body, nil
}

// stripURL drops *url.Error's method and URL, which the message already names
// as the daemon.
func stripURL(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

func parseError(resp *http.Response, body []byte) *Error {
	e := &Error{Status: resp.StatusCode, RequestID: sanitize(resp.Header.Get("X-Request-Id"), 128)}
	var r struct {
		Error       string `json:"error"`
		Description string `json:"error_description"`
		RequestID   string `json:"request_id"`
	}
	if isJSON(resp) && json.Unmarshal(body, &r) == nil {
		e.Code = sanitize(r.Error, 64)
		e.Description = sanitize(r.Description, 500)
		if e.RequestID == "" {
			e.RequestID = sanitize(r.RequestID, 128)
		}
	}
	if ra := resp.Header.Get("Retry-After"); ra != "" {
		if s, err := strconv.Atoi(strings.TrimSpace(ra)); err == nil && s > 0 {
			e.RetryAfter = time.Duration(s) * time.Second
		} else if t, err := http.ParseTime(ra); err == nil {
			if d := time.Until(t).Round(time.Second); d > 0 {
				e.RetryAfter = d
			}
		}
	}
	return e
}

func isJSON(resp *http.Response) bool {
	mt, _, err := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	return err == nil && (mt == "application/json" || strings.HasSuffix(mt, "+json"))
}

func decodeJSON(resp *http.Response, body []byte, v any) error {
	if !isJSON(resp) {
		return fmt.Errorf("%w: content type %q is not JSON", ErrBadResponse, sanitize(resp.Header.Get("Content-Type"), 64))
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	if err := dec.Decode(v); err != nil {
		// The JSON error may quote part of the body, which holds the secret.
		return fmt.Errorf("%w: malformed JSON", ErrBadResponse)
	}
	return nil
}

// sanitize keeps what the daemon says on one printable line of at most n bytes.
func sanitize(s string, n int) string {
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return ' '
		}
		return r
	}, s)
	s = strings.TrimSpace(s)
	if len(s) > n {
		s = strings.ToValidUTF8(s[:n], "") + "…"
	}
	return s
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return sanitize(s, 128)
}
