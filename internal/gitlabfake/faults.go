package gitlabfake

import (
	"net/http"
	"strconv"
	"strings"
	"time"

	"gltoken.dev/gltoken/internal/fingerprint"
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

// SetRateLimit sets GitLab's authenticated API limit (throttle_authenticated_api):
// requests a minute per user (0 restores the default, 2000, gitlab.com's). Like
// Rack::Attack, each user has a bucket of its own (a bot user's access tokens
// and a person's tokens count against their user, never against each other)
// in a fixed window aligned to the epoch, and only /api/ requests authenticated
// by an active token count; over the limit the answer is 429 "Retry later" with
// GitLab's RateLimit-* headers, Retry-After and RateLimit-ResetTime.
func (s *Server) SetRateLimit(limitPerMinute int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if limitPerMinute <= 0 {
		limitPerMinute = defaultRateLimit
	}
	s.rateLimit = limitPerMinute
}

// SetRateLimitHeaders turns GitLab's rate_limiting_headers_for_unthrottled_requests
// feature flag (18.6+, off by default) on or off: with it, every counted request's
// answer carries RateLimit-Name, -Limit, -Observed, -Remaining and -Reset, not only
// the 429 of the throttle (lib/gitlab/middleware/rack_attack_headers.rb).
func (s *Server) SetRateLimitHeaders(everyResponse bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rateHeadersAlways = everyResponse
}

// RateLimitObserved is what the throttle counted for u in the current window.
func (s *Server) RateLimitObserved(u *User) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.rateBuckets[u.ID]
	if b == nil || !b.window.Equal(s.now().Truncate(time.Minute)) {
		return 0
	}
	return b.count
}

type rateBucket struct {
	window time.Time
	count  int
}

// requesterLocked is who GitLab's throttles count r against
// (Gitlab::RackAttack::Request#throttled_identifer): the user of an active
// personal, project or group access token or OAuth token sent with an API
// request, and the token's id (0 for OAuth). Unauthenticated requests (per
// IP in GitLab, and off by default) and everything outside /api/ are not
// counted here.
func (s *Server) requesterLocked(r *http.Request) (userID, tokenID int64) {
	if !strings.HasPrefix(r.URL.EscapedPath(), "/api/") {
		return 0, 0
	}
	secret := r.Header.Get("PRIVATE-TOKEN")
	if secret == "" {
		if a := r.Header.Get("Authorization"); len(a) > 7 && strings.EqualFold(a[:7], "Bearer ") {
			secret = strings.TrimSpace(a[7:])
		}
	}
	if secret == "" {
		secret = r.URL.Query().Get("private_token")
	}
	if secret == "" {
		secret = r.URL.Query().Get("access_token")
	}
	if secret == "" {
		return 0, 0
	}
	h := fingerprint.Of(secret)
	if t := s.tokenByHash[h]; t != nil && isPAT(t.Kind) && s.patActiveLocked(t) {
		return t.UserID, t.ID
	}
	if o := s.oauthByAccess[h]; o != nil && o.accessible(s.now()) {
		return o.userID, 0
	}
	return 0, 0
}

// throttle counts r in its user's current one-minute window (aligned to the
// epoch, as Rack::Attack's period is) and sets GitLab's headers: on a request
// over the limit those of its 429 (it reports true), else, with SetRateLimitHeaders, the common ones.
// It also returns the requester's user and token ids.
func (s *Server) throttle(r *http.Request, h http.Header) (limited bool, userID, tokenID int64) {
	now := s.now()
	s.mu.Lock()
	userID, tokenID = s.requesterLocked(r)
	if userID == 0 {
		s.mu.Unlock()
		return false, 0, 0
	}
	window := now.Truncate(time.Minute)
	b := s.rateBuckets[userID]
	if b == nil {
		b = &rateBucket{}
		s.rateBuckets[userID] = b
	}
	if !window.Equal(b.window) {
		b.window, b.count = window, 0
	}
	b.count++
	count, limit, always := b.count, s.rateLimit, s.rateHeadersAlways
	s.mu.Unlock()

	// Gitlab::RackAttack::RequestThrottleData: retry_after = period - now % period.
	reset := window.Add(time.Minute)
	retryAfter := int(reset.Unix() - now.Unix())
	limited = count > limit
	if limited || always {
		h.Set("RateLimit-Name", "throttle_authenticated_api")
		h.Set("RateLimit-Limit", strconv.Itoa(limit))
		h.Set("RateLimit-Observed", strconv.Itoa(count))
		h.Set("RateLimit-Remaining", strconv.Itoa(max(limit-count, 0)))
		h.Set("RateLimit-Reset", strconv.FormatInt(reset.Unix(), 10))
	}
	if limited {
		h.Set("Retry-After", strconv.Itoa(retryAfter))
		h.Set("RateLimit-ResetTime", reset.UTC().Format(http.TimeFormat))
	}
	return limited, userID, tokenID
}
