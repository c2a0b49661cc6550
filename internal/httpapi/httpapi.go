// Package httpapi serves exchanged's HTTP API on Unix sockets and TCP: RFC 8693
// token exchange at /v1/token, RFC 7009 revocation at /v1/revoke, GitLab's
// job events at /v1/gitlab/events (webhook, X-Gitlab-Token checked), and
// /healthz, /readyz and /metrics. Handler builds the routes; Server adds
// listeners, TLS, limits and graceful shutdown. One function, writeError, maps
// the service's errors to HTTP statuses and RFC 6749 bodies.
package httpapi

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"

	"gltoken.dev/gltoken/internal/exchange"
)

// Exchanger is the service behind the API; *exchange.Service implements it.
type Exchanger interface {
	Exchange(ctx context.Context, req exchange.Request) (*exchange.Issued, error)
	Revoke(ctx context.Context, requestID, token, peer string) error
}

// Options configures Handler.
type Options struct {
	Service Exchanger
	// Ready reports whether the daemon can serve exchanges (keys loaded,
	// store reachable); nil means always ready.
	Ready   func(ctx context.Context) error
	Metrics http.Handler // served at /metrics when set
	// Guard counts each peer's failed requests (see FailureGuard); nil: no guard.
	Guard Guard
	// Limited, when set, is told the reason of every 429 answered (a
	// Reason* constant, or the service's own reason); /metrics counts them.
	Limited func(reason string)
	// Events takes GitLab's job events at POST /v1/gitlab/events, which
	// answers 404 unless both Events and WebhookSecret are set.
	Events JobEvents
	// WebhookSecret returns the X-Gitlab-Token GitLab's webhook must send
	// (read at each event, so a reload takes effect); "" disables the
	// endpoint. It MUST NOT be logged.
	WebhookSecret func() string
	Logger        *slog.Logger
	Now           func() time.Time
}

const (
	grantTypeTokenExchange = "urn:ietf:params:oauth:grant-type:token-exchange"
	tokenTypeJWT           = "urn:ietf:params:oauth:token-type:jwt"
	tokenTypeIDToken       = "urn:ietf:params:oauth:token-type:id_token"
	tokenTypeAccessToken   = "urn:ietf:params:oauth:token-type:access_token"

	maxBodyBytes = 64 << 10
	maxScopes    = 16
)

type api struct {
	Options
	readiness cachedCheck
}

// readyTTL is how long /readyz answers from its last successful check of the
// keys and the store, failTTL from a failed one (shorter, so that a daemon
// becomes ready soon after its store or keys do): a flood of probes costs the
// store at most one ping per failTTL, and only one at a time.
const (
	readyTTL = time.Second
	failTTL  = 100 * time.Millisecond
)

// cachedCheck runs a check at most once per ttl, sharing one run among
// concurrent callers.
type cachedCheck struct {
	mu      sync.Mutex
	at      time.Time
	err     error
	done    bool
	flight  singleflight.Group
	checker func(ctx context.Context) error
}

func (c *cachedCheck) check(ctx context.Context, now time.Time) error {
	c.mu.Lock()
	ttl := readyTTL
	if c.err != nil {
		ttl = failTTL
	}
	if c.done && now.Sub(c.at) < ttl && !now.Before(c.at) {
		err := c.err
		c.mu.Unlock()
		return err
	}
	c.mu.Unlock()
	_, err, _ := c.flight.Do("", func() (any, error) {
		// The check outlives a caller that hangs up: others share it.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 3*time.Second)
		defer cancel()
		err := c.checker(cctx)
		c.mu.Lock()
		c.at, c.err, c.done = now, err, true
		c.mu.Unlock()
		return nil, err
	})
	return err
}

// Handler returns the API's routes.
func Handler(o Options) http.Handler {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	a := &api{Options: o}
	a.readiness.checker = o.Ready
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/token", a.token)
	mux.HandleFunc("POST /v1/revoke", a.revoke)
	mux.HandleFunc("POST /v1/gitlab/events", a.events)
	for _, p := range []string{"/v1/token", "/v1/revoke", "/v1/gitlab/events"} {
		mux.HandleFunc(p, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Allow", http.MethodPost)
			writeJSON(w, http.StatusMethodNotAllowed, map[string]string{"error": exchange.CodeInvalidRequest, "error_description": p + " takes POST"})
		})
	}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", a.ready)
	if o.Metrics != nil {
		mux.Handle("GET /metrics", o.Metrics)
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if a.Guard != nil {
			a.Guard.Failed(peerOf(r))
		}
		writeJSON(w, http.StatusNotFound, map[string]string{"error": codeNotFound, "error_description": "no such endpoint: " + r.Method + " " + r.URL.Path})
	})
	return a.withRequestID(mux)
}

// codeNotFound answers a path the API does not have (not an RFC 6749 code).
const codeNotFound = "not_found"

type ctxKey int

const requestIDKey ctxKey = iota

func (a *api) withRequestID(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var b [8]byte
		_, _ = rand.Read(b[:])
		id := hex.EncodeToString(b[:])
		w.Header().Set("X-Request-Id", id)
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), requestIDKey, id)))
	})
}

func requestID(r *http.Request) string {
	id, _ := r.Context().Value(requestIDKey).(string)
	return id
}

func (a *api) ready(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if a.Ready != nil {
		if err := a.readiness.check(r.Context(), a.Now()); err != nil {
			// The reason goes to the log: a store's error can name its host,
			// user and database, which is not for any caller to read.
			a.Logger.Warn("not ready", "error", err.Error())
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, "not ready; the daemon's log says why")
			return
		}
	}
	fmt.Fprintln(w, "ready")
}

type tokenResponse struct {
	AccessToken     string `json:"access_token"`
	IssuedTokenType string `json:"issued_token_type"`
	TokenType       string `json:"token_type"`
	ExpiresIn       int64  `json:"expires_in"`
	Scope           string `json:"scope"`
	Username        string `json:"username"`
	// AccessLevel: an access token's role (30 developer, 40 maintainer), so
	// the helper can warn that a developer cannot push protected branches.
	AccessLevel int `json:"access_level,omitempty"`
}

func (a *api) token(w http.ResponseWriter, r *http.Request) {
	noStore(w)
	peer := peerOf(r)
	g := a.guarded(peer)
	form, err := readForm(w, r)
	if err != nil {
		a.fail(w, r, g, err)
		return
	}
	if gt := form.Get("grant_type"); gt != grantTypeTokenExchange {
		if gt == "" {
			a.fail(w, r, g, invalidRequest("grant_type is required (%s)", grantTypeTokenExchange))
			return
		}
		a.fail(w, r, g, &exchange.Error{Code: exchange.CodeUnsupportedGrantType, Description: "only " + grantTypeTokenExchange + " is supported"})
		return
	}
	switch form.Get("subject_token_type") {
	case tokenTypeJWT, tokenTypeIDToken:
	case "":
		a.fail(w, r, g, invalidRequest("subject_token_type is required (%s)", tokenTypeJWT))
		return
	default:
		a.fail(w, r, g, invalidRequest("subject_token_type must be %s or %s", tokenTypeJWT, tokenTypeIDToken))
		return
	}
	if form.Get("subject_token") == "" {
		a.fail(w, r, g, invalidRequest("subject_token is required: the job's GitLab ID token"))
		return
	}
	for _, p := range []string{"actor_token", "actor_token_type", "audience"} {
		if form.Has(p) {
			a.fail(w, r, g, invalidRequest("%s is not supported", p))
			return
		}
	}
	if rt := form.Get("requested_token_type"); rt != "" && rt != tokenTypeAccessToken {
		a.fail(w, r, g, invalidRequest("requested_token_type must be %s", tokenTypeAccessToken))
		return
	}
	scopes := strings.Fields(form.Get("scope"))
	if len(scopes) > maxScopes {
		a.fail(w, r, g, &exchange.Error{Code: exchange.CodeInvalidScope, Description: "too many scopes"})
		return
	}
	granted, err := a.Service.Exchange(r.Context(), exchange.Request{
		RequestID:    requestID(r),
		SubjectToken: form.Get("subject_token"),
		Resources:    form["resource"],
		Scopes:       scopes,
		Peer:         peer,
	})
	if err != nil {
		a.fail(w, r, g, err)
		return
	}
	expiresIn := int64(granted.ExpiresAt.Sub(a.Now()) / time.Second)
	writeJSON(w, http.StatusOK, tokenResponse{
		AccessToken:     granted.AccessToken,
		IssuedTokenType: tokenTypeAccessToken,
		TokenType:       "N_A",
		ExpiresIn:       max(expiresIn, 0),
		Scope:           strings.Join(granted.Scopes, " "),
		Username:        granted.Username,
		AccessLevel:     granted.AccessLevel,
	})
}

func (a *api) revoke(w http.ResponseWriter, r *http.Request) {
	noStore(w)
	g := a.guarded(peerOf(r))
	form, err := readForm(w, r)
	if err != nil {
		a.fail(w, r, g, err)
		return
	}
	tok := form.Get("token")
	if tok == "" {
		a.fail(w, r, g, invalidRequest("token is required"))
		return
	}
	if h := form.Get("token_type_hint"); h != "" && h != "access_token" {
		// RFC 7009: an unknown hint is ignored, the search goes on.
		a.Logger.Debug("ignoring token_type_hint", "hint", truncate(h, 40))
	}
	if err := a.Service.Revoke(r.Context(), requestID(r), tok, peerOf(r)); err != nil {
		a.fail(w, r, g, err)
		return
	}
	w.WriteHeader(http.StatusOK)
}

// guardState is what the failure guard said of a request's peer before the
// request was handled.
type guardState struct {
	peer       string
	exhausted  bool
	retryAfter time.Duration
}

func (a *api) guarded(peer string) guardState {
	g := guardState{peer: peer}
	if a.Guard != nil {
		g.exhausted, g.retryAfter = a.Guard.Exhausted(peer)
	}
	return g
}

// countsAsFailure: the errors the guard counts are those a request earns
// before or at verification: malformed requests and refused ID tokens. A
// verified job denied by the policy is not garbage; the quotas after
// verification are keyed by what its token proves.
func countsAsFailure(code string) bool {
	switch code {
	case exchange.CodeInvalidRequest, exchange.CodeUnsupportedGrantType, exchange.CodeInvalidGrant:
		return true
	}
	return false
}

// fail answers err. A failure the guard counts is recorded; when the peer
// had already spent its failure budget, the answer becomes 429 with
// Retry-After, still saying what was wrong with this request.
func (a *api) fail(w http.ResponseWriter, r *http.Request, g guardState, err error) {
	var e *exchange.Error
	if a.Guard != nil && errors.As(err, &e) && countsAsFailure(e.Code) {
		a.Guard.Failed(g.peer)
		if g.exhausted {
			err = &limitError{reason: ReasonPeerFailures, err: &exchange.Error{
				Code:        exchange.CodeRateLimited,
				Description: "too many failed requests from this client (" + guardKey(g.peer) + "); slow down. This one failed too: " + e.Description,
				RetryAfter:  max(g.retryAfter, time.Second),
			}}
		}
	}
	writeError(w, r, a.Logger, err, a.Limited)
}

// limitError carries the reason of a 429 the HTTP layer decided itself.
type limitError struct {
	reason string
	err    *exchange.Error
}

func (e *limitError) Error() string       { return e.err.Error() }
func (e *limitError) Unwrap() error       { return e.err }
func (e *limitError) LimitReason() string { return e.reason }

// readForm reads an application/x-www-form-urlencoded body the way RFC 6749
// asks: parameters only in the body, each at most once, bounded in size.
func readForm(w http.ResponseWriter, r *http.Request) (url.Values, error) {
	if r.URL.RawQuery != "" {
		return nil, invalidRequest("parameters must be sent in the form body, not the URL query")
	}
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != "application/x-www-form-urlencoded" {
		return nil, invalidRequest("Content-Type must be application/x-www-form-urlencoded")
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxBodyBytes)
	if err := r.ParseForm(); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, invalidRequest("request body larger than %d bytes", maxBodyBytes)
		}
		return nil, invalidRequest("malformed form body")
	}
	for k, v := range r.PostForm {
		// resource may repeat (RFC 8693, section 2.1): one credential for
		// several registry repositories.
		if k == "resource" && len(v) <= exchange.MaxResources {
			continue
		}
		if k == "resource" {
			return nil, invalidRequest("at most %d resource parameters", exchange.MaxResources)
		}
		if len(v) > 1 {
			return nil, invalidRequest("parameter %q given more than once", truncate(k, 40))
		}
	}
	return r.PostForm, nil
}

func invalidRequest(format string, args ...any) *exchange.Error {
	return &exchange.Error{Code: exchange.CodeInvalidRequest, Description: fmt.Sprintf(format, args...)}
}

// writeError is the one place that maps errors to HTTP. The client learns
// which check failed and the request id; the log gets the detail.
func writeError(w http.ResponseWriter, r *http.Request, log *slog.Logger, err error, limited func(reason string)) {
	var e *exchange.Error
	if !errors.As(err, &e) {
		e = &exchange.Error{Code: exchange.CodeServerError, Description: "internal error; the daemon's log has the details"}
	}
	status := http.StatusBadRequest
	code := e.Code
	switch e.Code {
	case exchange.CodeRateLimited:
		status, code = http.StatusTooManyRequests, exchange.CodeUnavailable
	case exchange.CodeUnavailable:
		status = http.StatusServiceUnavailable
	case exchange.CodeServerError:
		status = http.StatusInternalServerError
	}
	if e.RetryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(int((e.RetryAfter+time.Second-1)/time.Second)))
	}
	if status == http.StatusTooManyRequests {
		reason := ReasonService
		var lr interface{ LimitReason() string }
		if errors.As(err, &lr) && lr.LimitReason() != "" {
			reason = lr.LimitReason()
		}
		log.Debug("request limited", "request_id", requestID(r), "path", r.URL.Path, "reason", reason, "peer", peerOf(r), "retry_after", e.RetryAfter.String())
		if limited != nil {
			limited(reason)
		}
	}
	if status >= 500 {
		log.Error("request failed", "request_id", requestID(r), "path", r.URL.Path, "error", e.Code, "detail", e.Detail())
	}
	writeJSON(w, status, map[string]string{"error": code, "error_description": e.Description, "request_id": requestID(r)})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func noStore(w http.ResponseWriter) {
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Pragma", "no-cache")
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
