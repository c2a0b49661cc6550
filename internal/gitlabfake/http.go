package gitlabfake

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Request is one request the stand-in answered. It never holds a secret.
type Request struct {
	Method string
	Path   string // escaped path, without the query
	// Route is the API route that answered, as the stand-in declares it:
	// "GET /api/v4/projects/:id" ("" for git, the registry, and anything the
	// stand-in does not know).
	Route  string
	Status int // -1 when a LoseResponse fault dropped the connection
	Time   time.Time
	// UserID and TokenID name the user and the personal, project or group
	// access token an API request was authenticated with (0: none, or not
	// an API request; TokenID 0 for an OAuth token): what the rate limit
	// counts.
	UserID, TokenID int64
}

// Requests returns every request answered so far, oldest first.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Request(nil), s.requests...)
}

// Calls counts the API requests answered since the first n of Requests, by
// Route: what a piece of work cost in GitLab API calls (len(Requests())
// before it is n).
func (s *Server) Calls(n int) map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]int{}
	for _, r := range s.requests[min(n, len(s.requests)):] {
		if r.Route != "" {
			out[r.Route]++
		}
	}
	return out
}

// routeKey holds, in a request's context, where the router notes the route
// that answered it.
type routeKey struct{}

type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// middleware records requests, applies injected faults and GitLab's
// authenticated API rate limit (per user) with its headers.
func (s *Server) middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sw := &statusWriter{ResponseWriter: w}
		start := s.now()
		var userID, tokenID int64
		matched := new(string)
		r = r.WithContext(context.WithValue(r.Context(), routeKey{}, matched))
		defer func() {
			status := sw.status
			if status == 0 {
				status = http.StatusOK
			}
			s.mu.Lock()
			s.requests = append(s.requests, Request{Method: r.Method, Path: r.URL.EscapedPath(), Route: *matched, Status: status, Time: start,
				UserID: userID, TokenID: tokenID})
			s.mu.Unlock()
			if s.opts.Logf != nil {
				s.opts.Logf("gitlabfake: %s %s -> %d", r.Method, r.URL.EscapedPath(), status)
			}
		}()

		limited, uid, tid := s.throttle(r, sw.Header())
		userID, tokenID = uid, tid
		if limited {
			// Rack::Attack answers before the application is reached.
			sw.Header().Set("Content-Type", "text/plain")
			sw.WriteHeader(http.StatusTooManyRequests)
			_, _ = io.WriteString(sw, "Retry later\n")
			return
		}
		f := s.matchFault(r)
		if f != nil && f.Latency > 0 {
			t := time.NewTimer(f.Latency)
			select {
			case <-t.C:
			case <-r.Context().Done():
				t.Stop()
				return
			}
		}
		if f != nil && !f.LoseResponse && f.Status != 0 {
			if f.RetryAfter > 0 {
				sw.Header().Set("Retry-After", strconv.Itoa(int((f.RetryAfter+time.Second-1)/time.Second)))
			}
			if f.Status == http.StatusTooManyRequests {
				// Not the throttle's: GitLab's header middleware leaves
				// every 429 alone.
				for _, k := range []string{"RateLimit-Name", "RateLimit-Limit", "RateLimit-Observed", "RateLimit-Remaining", "RateLimit-Reset"} {
					sw.Header().Del(k)
				}
			}
			if f.Status == http.StatusTooManyRequests && f.Message == nil {
				sw.Header().Set("Content-Type", "text/plain")
				sw.WriteHeader(f.Status)
				_, _ = io.WriteString(sw, "Retry later\n")
				return
			}
			writeFault(sw, f)
			return
		}
		if f != nil && f.LoseResponse {
			// Perform the request for real, then lose the answer.
			rec := httptest.NewRecorder()
			next.ServeHTTP(rec, r)
			if f.Status != 0 {
				writeFault(sw, f)
				return
			}
			if hj, ok := w.(http.Hijacker); ok {
				if conn, _, err := hj.Hijack(); err == nil {
					sw.status = -1 // connection dropped
					_ = conn.Close()
					return
				}
			}
			panic(http.ErrAbortHandler)
		}
		next.ServeHTTP(sw, r)
	})
}

// writeFault answers a fault's status with GitLab's error shape.
func writeFault(w http.ResponseWriter, f *Fault) {
	if f.Message != nil {
		writeJSON(w, f.Status, map[string]any{"message": f.Message})
		return
	}
	writeMessage(w, f.Status, fmt.Sprintf("%d %s", f.Status, http.StatusText(f.Status)))
}

// route is one "METHOD /api/v4/projects/:id/..." pattern matched on the escaped path.
type route struct {
	method  string
	pattern string
	parts   []string
	handler func(w http.ResponseWriter, r *http.Request, p params)
}

// params are the unescaped values of the ":name" segments.
type params map[string]string

type router struct{ routes []route }

func (rt *router) handle(method, pattern string, h func(http.ResponseWriter, *http.Request, params)) {
	rt.routes = append(rt.routes, route{method: method, pattern: pattern, parts: strings.Split(strings.Trim(pattern, "/"), "/"), handler: h})
}

func (rt *router) match(r *http.Request) (*route, params, bool) {
	segs := strings.Split(strings.Trim(r.URL.EscapedPath(), "/"), "/")
	for _, rtt := range rt.routes {
		if len(rtt.parts) != len(segs) {
			continue
		}
		p := params{}
		ok := true
		for i, part := range rtt.parts {
			if strings.HasPrefix(part, ":") {
				v, err := url.PathUnescape(segs[i])
				if err != nil || v == "" {
					ok = false
					break
				}
				p[part[1:]] = v
			} else if part != segs[i] {
				ok = false
				break
			}
		}
		if !ok {
			continue
		}
		if rtt.method == r.Method || (rtt.method == http.MethodGet && r.Method == http.MethodHead) {
			return &rtt, p, true
		}
	}
	return nil, nil, false
}

func (s *Server) routes() http.Handler {
	rt := &router{}
	rt.handle("GET", "/.well-known/openid-configuration", s.handleDiscovery)
	rt.handle("GET", "/oauth/discovery/keys", s.handleJWKS)
	rt.handle("GET", "/jwt/auth", s.handleRegistryAuth)
	rt.handle("GET", "/-/standin/id_token", s.handleStandinIDToken)
	rt.handle("POST", "/-/standin/oauth/device", s.handleStandinDevice)
	rt.handle("POST", "/-/standin/projects", s.handleStandinProjects)
	rt.handle("POST", "/oauth/authorize_device", s.handleAuthorizeDevice)
	rt.handle("GET", "/oauth/device", s.handleDevicePage)
	rt.handle("GET", "/oauth/authorize", s.handleAuthorize)
	rt.handle("POST", "/oauth/token", s.handleOAuthToken)
	rt.handle("POST", "/oauth/revoke", s.handleOAuthRevoke)

	rt.handle("GET", "/api/v4/user", s.handleCurrentUser)
	rt.handle("GET", "/api/v4/users/:id", s.handleGetUser)
	rt.handle("GET", "/api/v4/version", s.handleVersion)
	rt.handle("GET", "/api/v4/projects/:id", s.handleGetProject)
	rt.handle("GET", "/api/v4/projects/:id/jobs/:job_id", s.handleGetJob)
	rt.handle("GET", "/api/v4/groups/:id", s.handleGetGroup)

	rt.handle("GET", "/api/v4/deploy_tokens", s.handleListAllDeployTokens)
	for _, kind := range []string{"projects", "groups"} {
		kind := kind
		rt.handle("GET", "/api/v4/"+kind+"/:id/deploy_tokens", func(w http.ResponseWriter, r *http.Request, p params) { s.handleListDeployTokens(w, r, p, kind) })
		rt.handle("POST", "/api/v4/"+kind+"/:id/deploy_tokens", func(w http.ResponseWriter, r *http.Request, p params) { s.handleCreateDeployToken(w, r, p, kind) })
		rt.handle("GET", "/api/v4/"+kind+"/:id/deploy_tokens/:token_id", func(w http.ResponseWriter, r *http.Request, p params) { s.handleGetDeployToken(w, r, p, kind) })
		rt.handle("DELETE", "/api/v4/"+kind+"/:id/deploy_tokens/:token_id", func(w http.ResponseWriter, r *http.Request, p params) { s.handleDeleteDeployToken(w, r, p, kind) })

		rt.handle("GET", "/api/v4/"+kind+"/:id/access_tokens", func(w http.ResponseWriter, r *http.Request, p params) { s.handleListAccessTokens(w, r, p, kind) })
		rt.handle("POST", "/api/v4/"+kind+"/:id/access_tokens", func(w http.ResponseWriter, r *http.Request, p params) { s.handleCreateAccessToken(w, r, p, kind) })
		rt.handle("GET", "/api/v4/"+kind+"/:id/access_tokens/:token_id", func(w http.ResponseWriter, r *http.Request, p params) { s.handleGetAccessToken(w, r, p, kind) })
		rt.handle("DELETE", "/api/v4/"+kind+"/:id/access_tokens/:token_id", func(w http.ResponseWriter, r *http.Request, p params) { s.handleRevokeAccessToken(w, r, p, kind) })
		rt.handle("POST", "/api/v4/"+kind+"/:id/access_tokens/:token_id/rotate", func(w http.ResponseWriter, r *http.Request, p params) { s.handleRotateAccessToken(w, r, p, kind) })
	}
	rt.handle("GET", "/api/v4/personal_access_tokens/self", s.handlePATSelf)
	rt.handle("DELETE", "/api/v4/personal_access_tokens/self", s.handlePATSelfRevoke)
	rt.handle("POST", "/api/v4/personal_access_tokens/self/rotate", s.handlePATSelfRotate)

	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.serveGoGet(w, r) { // a Rack middleware in GitLab: before any route
			return
		}
		if s.serveLFS(w, r) {
			return
		}
		if s.serveGit(w, r) {
			return
		}
		rtt, p, ok := rt.match(r)
		if !ok {
			writeMessage(w, http.StatusNotImplemented, fmt.Sprintf("stand-in: route not implemented: %s %s", r.Method, r.URL.EscapedPath()))
			return
		}
		if matched, ok := r.Context().Value(routeKey{}).(*string); ok {
			*matched = rtt.method + " " + rtt.pattern
		}
		rtt.handler(w, r, p)
	})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// writeMessage answers GitLab's error shape {"message": "..."}.
func writeMessage(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]string{"message": msg})
}

// writeGrapeError answers a Grape parameter-validation error: 400 {"error": "..."}.
func writeGrapeError(w http.ResponseWriter, msg string) {
	writeJSON(w, http.StatusBadRequest, map[string]string{"error": msg})
}

// input holds request parameters from the query, a form body or a JSON body, as Grape merges them.
type input struct {
	vals map[string]any
}

func readInput(r *http.Request) (input, error) {
	in := input{vals: map[string]any{}}
	for k, v := range r.URL.Query() {
		in.setForm(k, v)
	}
	if r.Body == nil || r.Method == http.MethodGet || r.Method == http.MethodHead {
		return in, nil
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		return in, err
	}
	if len(strings.TrimSpace(string(body))) == 0 {
		return in, nil
	}
	mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	switch mt {
	case "application/json":
		var m map[string]any
		if err := json.Unmarshal(body, &m); err != nil {
			return in, fmt.Errorf("body is not valid JSON")
		}
		for k, v := range m {
			in.vals[k] = v
		}
	default:
		form, err := url.ParseQuery(string(body))
		if err != nil {
			return in, err
		}
		for k, v := range form {
			in.setForm(k, v)
		}
	}
	return in, nil
}

func (in input) setForm(k string, v []string) {
	if strings.HasSuffix(k, "[]") {
		arr := make([]any, len(v))
		for i, x := range v {
			arr[i] = x
		}
		in.vals[strings.TrimSuffix(k, "[]")] = arr
		return
	}
	if len(v) > 0 {
		in.vals[k] = v[len(v)-1]
	}
}

// str returns the string value of k; numbers and booleans are stringified as Grape coerces them.
func (in input) str(k string) (string, bool) {
	v, ok := in.vals[k]
	if !ok || v == nil {
		return "", false
	}
	switch x := v.(type) {
	case string:
		return x, true
	case float64:
		return strconv.FormatFloat(x, 'f', -1, 64), true
	case bool:
		return strconv.FormatBool(x), true
	}
	return "", false
}

// list returns an array parameter; a string is split on commas (CommaSeparatedToArray).
func (in input) list(k string) ([]string, bool, bool) {
	v, ok := in.vals[k]
	if !ok || v == nil {
		return nil, false, true
	}
	switch x := v.(type) {
	case string:
		var out []string
		for _, s := range strings.Split(x, ",") {
			if s = strings.TrimSpace(s); s != "" {
				out = append(out, s)
			}
		}
		return out, true, true
	case []any:
		out := make([]string, 0, len(x))
		for _, e := range x {
			s, ok := e.(string)
			if !ok {
				return nil, true, false
			}
			out = append(out, s)
		}
		return out, true, true
	}
	return nil, true, false
}
