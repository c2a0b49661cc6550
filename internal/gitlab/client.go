// Package gitlab is the adapter between the exchange service and GitLab's
// REST API: it mints, finds and revokes deploy tokens and project/group access
// tokens with gitlab.com/gitlab-org/api/client-go, and resolves the exact
// path of a project or group to its id. New builds a *Client, which implements exchange.Minter.
//
// Creates are never retried (client-go would retry a POST on any 5xx and mint
// twice): an ambiguous create returns an error wrapping exchange.ErrAmbiguous and
// the caller reconciles with FindByName. GETs and DELETEs retry a little.
package gitlab

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	gl "gitlab.com/gitlab-org/api/client-go"
	"golang.org/x/time/rate"

	"gltoken.dev/gltoken/internal/exchange"
)

// Config configures a Client.
type Config struct {
	// BaseURL is GitLab's URL, e.g. https://gitlab.example.com (client-go appends /api/v4/).
	BaseURL string
	// Token is the service account's token. It MUST NOT be logged; the Client
	// never puts it in an error or a log record.
	Token string
	// TokenSource, when set, is read at every request instead of Token: the
	// service token in force, which self-rotation replaces (svctoken.Keeper.Token).
	TokenSource func() string
	// Tokens, when set, are several service-account tokens (gitlab.token_files),
	// used by the calls each has left (see Token); Token, TokenSource and
	// Budget are then not used.
	Tokens []Token
	// OnRejected, when set, hears of each answer 401 GitLab gave a call
	// made with token i (its index in Tokens; 0 for Token): the token may
	// have been revoked. It must not block.
	OnRejected func(i int)
	// HTTPClient carries timeouts and the CA pool. It is copied, never modified.
	// Default: a client with a 30 s timeout.
	HTTPClient *http.Client
	// Now is the clock (default time.Now).
	Now    func() time.Time
	Logger *slog.Logger
	// OnResponse, when set, is called once per HTTP attempt with the method, a
	// route template such as "POST /projects/:id/deploy_tokens" (never an id or
	// a secret) and the status code (0 when no response arrived).
	OnResponse func(method, route string, status int)

	// Retries is how many times a GET or DELETE is retried after a 5xx or a
	// connection error (default 2; negative: never). Creates are never retried.
	Retries int
	// Budget, when set, is the GitLab API budget every HTTP attempt with
	// Token takes a unit of (shared by the Clients given the same Budget).
	// Default: a budget of DefaultBudgetPerMinute of the Client's own.
	Budget *Budget

	// RetryWait is the first backoff of those retries, doubled each time and
	// capped at 2 s (default 250 ms).
	RetryWait time.Duration
}

// ErrTokenInvalid: GitLab answered 401 to the service account's token: it is
// invalid, expired or revoked (or lacks the api scope). Errors wrapping it
// also wrap exchange.ErrForbidden and, except on access-token listings (where
// GitLab answers 401 for a missing role too), exchange.ErrServiceTokenInvalid.
var ErrTokenInvalid = errors.New("gitlab: the service token was rejected (401): invalid, expired, revoked, or without the api scope")

// Client talks to one GitLab instance as the service account.
type Client struct {
	gl         *gl.Client
	now        func() time.Time
	log        *slog.Logger
	onResponse func(method, route string, status int)
	notFound   notFoundCache
	router     *tokenRouter
}

var _ exchange.Minter = (*Client)(nil)

// Budget is the GitLab API budget of the Client's first token.
func (c *Client) Budget() *Budget { return c.router.tokens[0].Budget }

// New builds a Client. It does not contact GitLab (see Ping).
func New(cfg Config) (*Client, error) {
	if cfg.BaseURL == "" {
		return nil, errors.New("gitlab: base URL is required")
	}
	if !strings.HasPrefix(cfg.BaseURL, "https://") && !strings.HasPrefix(cfg.BaseURL, "http://") {
		return nil, fmt.Errorf("gitlab: base URL %q must start with https:// or http://", cfg.BaseURL)
	}
	tokens := cfg.Tokens
	if len(tokens) == 0 {
		if cfg.TokenSource == nil && strings.TrimSpace(cfg.Token) == "" {
			return nil, errors.New("gitlab: service token is empty")
		}
		src := cfg.TokenSource
		if src == nil {
			tok := cfg.Token
			src = func() string { return tok }
		}
		tokens = []Token{{Secret: src, Budget: cfg.Budget}}
	}
	c := &Client{
		now:        cfg.Now,
		log:        cfg.Logger,
		onResponse: cfg.OnResponse,
	}
	if c.now == nil {
		c.now = time.Now
	}
	c.router = &tokenRouter{tokens: make([]Token, len(tokens)), onRejected: cfg.OnRejected}
	for i, t := range tokens {
		if t.Secret == nil {
			return nil, fmt.Errorf("gitlab: token %d has no secret", i)
		}
		if t.Budget == nil {
			t.Budget = NewBudget(0, c.now)
		}
		c.router.tokens[i] = t
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}

	// Copy the injected client: client-go's interceptors replace the Transport
	// of the *http.Client they are given.
	var hc http.Client
	if cfg.HTTPClient != nil {
		hc = *cfg.HTTPClient
	} else {
		hc.Timeout = 30 * time.Second
	}
	if hc.Transport == nil {
		hc.Transport = http.DefaultTransport
	}
	// The service token travels in PRIVATE-TOKEN, which net/http forwards
	// on a redirect, even to another host. The API never needs one: a
	// redirect comes back as an error (GitLab's URL is misconfigured).
	hc.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

	retries := cfg.Retries
	switch {
	case retries == 0:
		retries = 2
	case retries < 0:
		retries = 0
	}
	wait := cfg.RetryWait
	if wait <= 0 {
		wait = 250 * time.Millisecond
	}

	// The router sets the token of each request; the auth source only
	// keeps client-go from refusing to build one without.
	auth := tokenSource(c.router.tokens[0].Secret)
	client, err := gl.NewAuthSourceClient(auth,
		gl.WithBaseURL(cfg.BaseURL),
		gl.WithHTTPClient(&hc),
		gl.WithUserAgent("gltoken"),
		gl.WithURLWarningLogger(c.log),
		gl.WithCustomRetry(checkRetry),
		gl.WithCustomRetryMax(retries),
		gl.WithCustomRetryWaitMinMax(wait, 2*time.Second),
		gl.WithCustomBackoff(backoff),
		// No client-side throttling: a 429 goes back to the caller with its
		// wait (RetryAfterError). Setting a limiter also keeps client-go from
		// swapping its limiter under concurrent requests.
		gl.WithCustomLimiter(rate.NewLimiter(rate.Inf, 0)),
		// The router (each token's budget) is outermost: a call it keeps
		// back is not a GitLab answer.
		gl.WithInterceptor(c.router.transport),
		gl.WithInterceptor(c.observe),
	)
	if err != nil {
		return nil, fmt.Errorf("gitlab: build client: %w", err)
	}
	c.gl = client
	return c, nil
}

// checkRetry retries only idempotent reads and deletes, and only on a
// connection error, a 5xx (not 501) or a missing status. Never a POST, never a
// 429 (the caller gets the wait instead), never after the context is done.
func checkRetry(ctx context.Context, resp *http.Response, err error) (bool, error) {
	if ctx.Err() != nil {
		return false, ctx.Err()
	}
	var method string
	switch {
	case resp != nil && resp.Request != nil:
		method = resp.Request.Method
	default:
		method = methodFromContext(ctx)
	}
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodDelete:
	default:
		return false, nil
	}
	if err != nil {
		// A refusal of the budget is not retried: the caller gets the wait.
		var be *budgetError
		if errors.As(err, &be) {
			return false, nil
		}
		// A certificate problem does not heal in a second.
		var certErr *tls.CertificateVerificationError
		return !errors.As(err, &certErr), nil
	}
	if resp.StatusCode == 0 || (resp.StatusCode >= 500 && resp.StatusCode != http.StatusNotImplemented) {
		return true, nil
	}
	return false, nil
}

// backoff doubles from lo up to hi.
func backoff(lo, hi time.Duration, attempt int, _ *http.Response) time.Duration {
	d := time.Duration(float64(lo) * math.Pow(2, float64(attempt)))
	if d > hi || d <= 0 {
		d = hi
	}
	return d
}

type routeKey struct{}

type routeInfo struct {
	method, route string
}

func methodFromContext(ctx context.Context) string {
	if ri, ok := ctx.Value(routeKey{}).(routeInfo); ok {
		return ri.method
	}
	return ""
}

// observe is a client-go interceptor: it reports each attempt to OnResponse.
func (c *Client) observe(next http.RoundTripper) http.RoundTripper {
	return roundTripFunc(func(req *http.Request) (*http.Response, error) {
		resp, err := next.RoundTrip(req)
		if c.onResponse != nil {
			route := "unknown"
			if ri, ok := req.Context().Value(routeKey{}).(routeInfo); ok {
				route = ri.route
			}
			status := 0
			if resp != nil {
				status = resp.StatusCode
			}
			c.onResponse(req.Method, route, status)
		}
		return resp, err
	})
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// reqOpts binds a call to ctx and names its route for metrics.
func reqOpts(ctx context.Context, method, route string) []gl.RequestOptionFunc {
	ctx = context.WithValue(ctx, routeKey{}, routeInfo{method: method, route: method + " " + route})
	return []gl.RequestOptionFunc{gl.WithContext(ctx)}
}

// Ping checks that GitLab answers and that the service token is valid, active
// and carries the api scope (GET /personal_access_tokens/self). It logs a
// warning when the token expires within 14 days.
func (c *Client) Ping(ctx context.Context) error {
	const route = "/personal_access_tokens/self"
	tok, resp, err := c.gl.PersonalAccessTokens.GetSinglePersonalAccessToken(reqOpts(ctx, http.MethodGet, route)...)
	if err != nil {
		if status(resp) == http.StatusNotFound {
			// GitLab before 15.5 has no /personal_access_tokens/self: fall back
			// to /version, which also needs a valid token.
			_, vresp, verr := c.gl.Version.GetVersion(reqOpts(ctx, http.MethodGet, "/version")...)
			if verr != nil {
				return c.mapError("ping GitLab", "", vresp, verr, false)
			}
			return nil
		}
		return c.mapError("ping GitLab", "", resp, err, false)
	}
	if tok.Revoked || !tok.Active {
		return fmt.Errorf("ping GitLab: %w", ErrTokenInvalid)
	}
	if tok.ExpiresAt != nil {
		exp := time.Time(*tok.ExpiresAt)
		if !exp.IsZero() && exp.Sub(c.now()) < 14*24*time.Hour {
			c.log.WarnContext(ctx, "gitlab service token expires soon", "expires_at", exp.Format(time.DateOnly), "token_name", tok.Name)
		}
	}
	hasAPI := false
	for _, s := range tok.Scopes {
		if s == "api" {
			hasAPI = true
		}
	}
	if !hasAPI {
		return fmt.Errorf("ping GitLab: the service token %q lacks the api scope (has %v): it cannot create tokens", tok.Name, tok.Scopes)
	}
	return nil
}

func status(resp *gl.Response) int {
	if resp == nil || resp.Response == nil {
		return 0
	}
	return resp.StatusCode
}

// mapError turns a client-go result into one of the exchange errors, with the
// operation and (when known) the owner in the message. create marks a
// non-idempotent call: any outcome that may have reached GitLab is ambiguous.
// The message never contains the service token or a minted secret: client-go
// errors carry the URL (no credentials) and GitLab's message.
func (c *Client) mapError(op, who string, resp *gl.Response, err error, create bool) error {
	if err == nil {
		return nil
	}
	code := status(resp)
	if code == 0 {
		// Kept back by the budget: never sent, so never ambiguous.
		var be *budgetError
		if errors.As(err, &be) {
			return &exchange.RetryAfterError{After: be.after, Err: fmt.Errorf("%s: %w", op, be)}
		}
		// No response: a transport error, a cancelled context, or an error
		// building the request.
		if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
			if create {
				return fmt.Errorf("%s: %w: %w", op, exchange.ErrAmbiguous, err)
			}
			return fmt.Errorf("%s: %w: %w", op, exchange.ErrUnavailable, err)
		}
		if create && !notSent(err) {
			return fmt.Errorf("%s: %w: %v", op, exchange.ErrAmbiguous, err)
		}
		return fmt.Errorf("%s: %w: %v", op, exchange.ErrUnavailable, err)
	}
	msg := gitlabMessage(err)
	role := who
	if role == "" {
		role = "the rights this call needs"
	}
	switch {
	case code == http.StatusUnauthorized && who != "" && !create && (strings.HasPrefix(op, "list ") || strings.HasPrefix(op, "find ")):
		// GitLab also answers 401 (not 403) when listing access tokens
		// without the role: either may be the cause.
		return fmt.Errorf("%s: %w: %w (or, for access-token calls, the account lacks %s)", op, ErrTokenInvalid, exchange.ErrForbidden, who)
	case code == http.StatusUnauthorized:
		// Anywhere else GitLab's 401 is about the token itself (a create
		// without the role answers 400 or 403).
		return fmt.Errorf("%s: %w: %w: %w", op, ErrTokenInvalid, exchange.ErrServiceTokenInvalid, exchange.ErrForbidden)
	case code == http.StatusForbidden:
		return fmt.Errorf("%s: %w: the service account lacks %s (GitLab: %s)", op, exchange.ErrForbidden, role, msg)
	case code == http.StatusNotFound:
		return fmt.Errorf("%s: %w (or not visible to the service account)", op, exchange.ErrNotFound)
	case code == http.StatusTooManyRequests:
		return &exchange.RetryAfterError{
			After: retryAfter(resp, c.now()),
			Err:   fmt.Errorf("%s: %w (GitLab answered 429)", op, exchange.ErrRateLimited),
		}
	case code == http.StatusBadRequest && strings.Contains(strings.ToLower(msg), "permission"):
		// GitLab's access-token create service answers 400 "User does not
		// have permission to create … access token".
		return fmt.Errorf("%s: %w: the service account lacks %s (GitLab: %s)", op, exchange.ErrForbidden, role, msg)
	case code >= 300 && code < 400:
		// Not followed (see New): nothing happened, even for a create.
		return fmt.Errorf("%s: %w: GitLab redirected (%d to %q): set the GitLab URL to the address it redirects to",
			op, exchange.ErrUnavailable, code, resp.Header.Get("Location"))
	case code >= 200 && code < 300:
		return fmt.Errorf("%s: %w: GitLab answered %d but the answer was unreadable: %v", op, exchange.ErrUnavailable, code, err)
	case code >= 400 && code < 500:
		return fmt.Errorf("%s: %w: %d %s", op, exchange.ErrRejected, code, msg)
	case create:
		return fmt.Errorf("%s: %w: GitLab answered %d (%s)", op, exchange.ErrAmbiguous, code, msg)
	default:
		return fmt.Errorf("%s: %w: GitLab answered %d (%s)", op, exchange.ErrUnavailable, code, msg)
	}
}

// notSent reports transport errors that certainly happened before the request
// reached GitLab (DNS, dial), so a create did not happen.
func notSent(err error) bool {
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) {
		return true
	}
	var opErr *net.OpError
	if errors.As(err, &opErr) && opErr.Op == "dial" {
		return true
	}
	return false
}

// gitlabMessage extracts GitLab's message from a client-go error.
func gitlabMessage(err error) string {
	var er *gl.ErrorResponse
	if errors.As(err, &er) {
		// GitLab answers {"message": "..."} or {"error": "..."} (client-go
		// renders those as "{message: ...}"), or plain text ("Retry later").
		var body struct {
			Message any    `json:"message"`
			Error   string `json:"error"`
		}
		switch {
		case json.Unmarshal(er.Body, &body) != nil:
			if t := strings.TrimSpace(string(er.Body)); t != "" && len(t) < 200 && utf8.ValidString(t) {
				return t
			}
		case body.Message != nil:
			if m, ok := body.Message.(string); ok && m != "" {
				return m
			}
		case body.Error != "":
			return body.Error
		}
		if er.Message != "" {
			if len(er.Message) > 300 {
				return er.Message[:300] + "…"
			}
			return er.Message
		}
	}
	if errors.Is(err, gl.ErrNotFound) {
		return "404 Not Found"
	}
	return "no message"
}

// retryAfter reads Retry-After (seconds or HTTP date), else RateLimit-Reset
// (unix seconds), else one minute (GitLab's rate-limit period).
func retryAfter(resp *gl.Response, now time.Time) time.Duration {
	if resp == nil || resp.Response == nil {
		return time.Minute
	}
	h := resp.Header
	if v := strings.TrimSpace(h.Get("Retry-After")); v != "" {
		if s, err := strconv.Atoi(v); err == nil && s >= 0 {
			return time.Duration(s) * time.Second
		}
		if t, err := http.ParseTime(v); err == nil {
			if d := t.Sub(now); d > 0 {
				return d
			}
			return 0
		}
	}
	if v := strings.TrimSpace(h.Get("RateLimit-Reset")); v != "" {
		if s, err := strconv.ParseInt(v, 10, 64); err == nil && s > 0 {
			if d := time.Unix(s, 0).Sub(now); d > 0 {
				return d.Round(time.Second)
			}
			return 0
		}
	}
	return time.Minute
}
