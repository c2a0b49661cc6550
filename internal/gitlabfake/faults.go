package gitlabfake

import (
	"net/http"
	"strconv"
	"strings"
	"time"
)

// defaultRateLimit is gitlab.com's authenticated API limit (requests per minute).
const defaultRateLimit = 2000

// Fault describes a failure to inject for matching requests.
type Fault struct {
	Method     string // "" matches any method
	PathPrefix string // prefix of the escaped path; "" matches any path
	Status     int    // answer this status instead of serving (429 answers "Retry later" as Rack::Attack does)
	// Message, when set, is the answer's {"message": Message}, as GitLab's
	// render_api_error! writes it: a string ("400 Bad request - Failed to find
	// bot user"), or an object for model validation errors
	// ({"name": ["has already been taken"]}) and for an application rate limit's
	// 429 ({"error": "This endpoint has been requested too many times. Try
	// again later."}, which carries no Retry-After). Default "<Status> <text>".
	Message    any
	RetryAfter time.Duration
	Latency    time.Duration // wait this long before answering (or serving)
	// LoseResponse performs the request for real, then answers Status (if set, e.g. 502) or drops
	// the connection, as if the response had been lost on the way back.
	LoseResponse bool
	Times        int // how many requests to affect; 0 = forever
}

type faultEntry struct {
	f    Fault
	left int
}

// InjectFault adds a fault; the returned func removes it. Faults match in the order added.
func (s *Server) InjectFault(f Fault) (remove func()) {
	e := &faultEntry{f: f, left: f.Times}
	s.mu.Lock()
	s.faults = append(s.faults, e)
	s.mu.Unlock()
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		for i, x := range s.faults {
			if x == e {
				s.faults = append(s.faults[:i], s.faults[i+1:]...)
				break
			}
		}
	}
}

func (s *Server) matchFault(r *http.Request) *Fault {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, e := range s.faults {
		if e.f.Method != "" && !strings.EqualFold(e.f.Method, r.Method) {
			continue
		}
		if !strings.HasPrefix(r.URL.EscapedPath(), e.f.PathPrefix) {
			continue
		}
		f := e.f
		if e.f.Times > 0 {
			e.left--
			if e.left <= 0 {
				s.faults = append(s.faults[:i], s.faults[i+1:]...)
			}
		}
		return &f
	}
	return nil
}

// SetRateLimit sets the limit per minute for all requests (0 restores the default, 2000).
// RateLimit-* headers are always present; over the limit the answer is 429 with Retry-After.
func (s *Server) SetRateLimit(limitPerMinute int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if limitPerMinute <= 0 {
		limitPerMinute = defaultRateLimit
	}
	s.rateLimit = limitPerMinute
}

// rateLimitHeaders counts the request in the current fixed one-minute window (aligned to the
// epoch like Rack::Attack) and sets GitLab's headers. It reports whether the request is over the
// limit and the seconds until the window resets.
func (s *Server) rateLimitHeaders(h http.Header) (bool, int) {
	now := s.now()
	s.mu.Lock()
	window := now.Truncate(time.Minute)
	if !window.Equal(s.rateWindow) {
		s.rateWindow = window
		s.rateCount = 0
	}
	s.rateCount++
	count, limit := s.rateCount, s.rateLimit
	s.mu.Unlock()

	reset := window.Add(time.Minute)
	retryAfter := int(reset.Unix() - now.Unix())
	if retryAfter < 1 {
		retryAfter = 1
	}
	remaining := limit - count
	if remaining < 0 {
		remaining = 0
	}
	h.Set("RateLimit-Name", "throttle_authenticated_api")
	h.Set("RateLimit-Limit", strconv.Itoa(limit))
	h.Set("RateLimit-Observed", strconv.Itoa(count))
	h.Set("RateLimit-Remaining", strconv.Itoa(remaining))
	h.Set("RateLimit-Reset", strconv.FormatInt(reset.Unix(), 10))
	h.Set("RateLimit-ResetTime", reset.UTC().Format(http.TimeFormat))
	return count > limit, retryAfter
}
