// Package httpapi serves exchanged's HTTP API on Unix sockets and TCP: RFC 8693
// token exchange at /v1/token, RFC 7009 revocation at /v1/revoke, and
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
	"time"

	"gltoken.dev/gltoken/internal/exchange"
)

// Exchanger is the service behind the API; *exchange.Service implements it.
type Exchanger interface {
	Exchange(ctx context.Context, req exchange.Request) (*exchange.Issued, error)
	Revoke(ctx context.Context, requestID, token, peer string) error
}

// Limiter admits or refuses one request from a client (by peer identity).
type Limiter interface {
	Allow(client string) (ok bool, retryAfter time.Duration)
}

// Options configures Handler.
type Options struct {
	Service Exchanger
	// Ready reports whether the daemon can serve exchanges (keys loaded,
	// store reachable); nil means always ready.
	Ready   func(ctx context.Context) error
	Metrics http.Handler // served at /metrics when set
	Limiter Limiter      // nil: no limit
	Logger  *slog.Logger
	Now     func() time.Time
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
}

// Handler returns the API's routes.
func Handler(o Options) http.Handler {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	a := &api{o}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/token", a.token)
	mux.HandleFunc("POST /v1/revoke", a.revoke)
	for _, p := range []string{"/v1/token", "/v1/revoke"} {
		mux.HandleFunc(p, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Allow", http.MethodPost)
			writeJSON(w, http.StatusMethodNotAllowed, map[string]string{"error": "invalid_request", "error_description": p + " takes POST"})
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
		writeJSON(w, http.StatusNotFound, map[string]string{"error": "not_found", "error_description": "no such endpoint: " + r.Method + " " + r.URL.Path})
	})
	return a.withRequestID(mux)
}

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
		ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
		defer cancel()
		if err := a.Ready(ctx); err != nil {
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
}

func (a *api) token(w http.ResponseWriter, r *http.Request) {
	noStore(w)
	peer := peerOf(r)
	if !a.admit(w, r) {
		return
	}
	form, err := readForm(w, r)
	if err != nil {
		writeError(w, r, a.Logger, err)
		return
	}
	if gt := form.Get("grant_type"); gt != grantTypeTokenExchange {
		if gt == "" {
			writeError(w, r, a.Logger, invalidRequest("grant_type is required (%s)", grantTypeTokenExchange))
			return
		}
		writeError(w, r, a.Logger, &exchange.Error{Code: "unsupported_grant_type", Description: "only " + grantTypeTokenExchange + " is supported"})
		return
	}
	switch form.Get("subject_token_type") {
	case tokenTypeJWT, tokenTypeIDToken:
	case "":
		writeError(w, r, a.Logger, invalidRequest("subject_token_type is required (%s)", tokenTypeJWT))
		return
	default:
		writeError(w, r, a.Logger, invalidRequest("subject_token_type must be %s or %s", tokenTypeJWT, tokenTypeIDToken))
		return
	}
	if form.Get("subject_token") == "" {
		writeError(w, r, a.Logger, invalidRequest("subject_token is required: the job's GitLab ID token"))
		return
	}
	for _, p := range []string{"actor_token", "actor_token_type", "audience"} {
		if form.Has(p) {
			writeError(w, r, a.Logger, invalidRequest("%s is not supported", p))
			return
		}
	}
	if rt := form.Get("requested_token_type"); rt != "" && rt != tokenTypeAccessToken {
		writeError(w, r, a.Logger, invalidRequest("requested_token_type must be %s", tokenTypeAccessToken))
		return
	}
	scopes := strings.Fields(form.Get("scope"))
	if len(scopes) > maxScopes {
		writeError(w, r, a.Logger, &exchange.Error{Code: exchange.CodeInvalidScope, Description: "too many scopes"})
		return
	}
	iss, err := a.Service.Exchange(r.Context(), exchange.Request{
		RequestID:    requestID(r),
		SubjectToken: form.Get("subject_token"),
		Resource:     form.Get("resource"),
		Scopes:       scopes,
		Peer:         peer,
	})
	if err != nil {
		writeError(w, r, a.Logger, err)
		return
	}
	expiresIn := int64(iss.ExpiresAt.Sub(a.Now()) / time.Second)
	writeJSON(w, http.StatusOK, tokenResponse{
		AccessToken:     iss.AccessToken,
		IssuedTokenType: tokenTypeAccessToken,
		TokenType:       "N_A",
		ExpiresIn:       max(expiresIn, 0),
		Scope:           strings.Join(iss.Scopes, " "),
		Username:        iss.Username,
	})
}

func (a *api) revoke(w http.ResponseWriter, r *http.Request) {
	noStore(w)
	if !a.admit(w, r) {
		return
	}
	form, err := readForm(w, r)
	if err != nil {
		writeError(w, r, a.Logger, err)
		return
	}
	tok := form.Get("token")
	if tok == "" {
		writeError(w, r, a.Logger, invalidRequest("token is required"))
		return
	}
	if h := form.Get("token_type_hint"); h != "" && h != "access_token" {
		// RFC 7009: an unknown hint is ignored, the search goes on.
		a.Logger.Debug("ignoring token_type_hint", "hint", truncate(h, 40))
	}
	if err := a.Service.Revoke(r.Context(), requestID(r), tok, peerOf(r)); err != nil {
		writeError(w, r, a.Logger, err)
		return
	}
	w.WriteHeader(http.StatusOK)
}

// admit applies the per-client rate limit; a refused request has its 429.
func (a *api) admit(w http.ResponseWriter, r *http.Request) bool {
	if a.Limiter == nil {
		return true
	}
	if ok, after := a.Limiter.Allow(peerOf(r)); !ok {
		writeError(w, r, a.Logger, &exchange.Error{Code: exchange.CodeRateLimited, Description: "too many requests from this client; slow down", RetryAfter: after})
		return false
	}
	return true
}

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
func writeError(w http.ResponseWriter, r *http.Request, log *slog.Logger, err error) {
	var e *exchange.Error
	if !errors.As(err, &e) {
		e = &exchange.Error{Code: exchange.CodeServerError, Description: "internal error; the daemon's log has the details"}
	}
	status := http.StatusBadRequest
	code := e.Code
	switch e.Code {
	case exchange.CodeRateLimited:
		status, code = http.StatusTooManyRequests, "temporarily_unavailable"
	case exchange.CodeUnavailable:
		status = http.StatusServiceUnavailable
	case exchange.CodeServerError:
		status = http.StatusInternalServerError
	}
	if e.RetryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(int((e.RetryAfter+time.Second-1)/time.Second)))
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
