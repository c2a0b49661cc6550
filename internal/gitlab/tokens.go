package gitlab

import (
	"context"
	"errors"
	"io"
	"net/http"
	"time"

	gl "gitlab.com/gitlab-org/api/client-go"

	"gltoken.dev/gltoken/internal/fingerprint"
	"gltoken.dev/gltoken/internal/svctoken"
)

// Token is one service-account token a Client may call GitLab with. With
// several, each call goes with the usable token that has the most calls
// left: GitLab keeps one rate-limit bucket per user, so tokens of different
// service accounts add up, and each token has its own Budget.
type Token struct {
	// Secret returns the token in force, read at every request
	// (svctoken.Keeper.Token, which self-rotation replaces). It MUST NOT
	// be logged.
	Secret func() string
	// Usable reports whether the token may be chosen (nil: always). The
	// daemon answers false while GitLab rejects the token or it lacks the
	// api scope (svctoken.Keeper.Problem): it is out of rotation. When no
	// token is usable, calls still go (with the one with most calls left),
	// so that GitLab's answer reaches the caller.
	Usable func() bool
	// Budget is the token's GitLab API budget (nil: DefaultBudgetPerMinute
	// of its own).
	Budget *Budget
}

// TokenStats is what /metrics shows of one token.
type TokenStats struct {
	// Fingerprint is fingerprint.Short of the token in force (never the secret).
	Fingerprint string
	Usable      bool
	Budget      BudgetStats
}

// tokenKey marks a call that must go with one token, whose secret the
// caller has set (the token's own endpoints: GET /personal_access_tokens/self
// and its rotation).
type tokenKey struct{}

// withToken binds ctx's calls to token i.
func withToken(ctx context.Context, i int) context.Context {
	return context.WithValue(ctx, tokenKey{}, i)
}

// tokenRouter is the client-go interceptor that sends each request with one
// of the tokens, after taking a unit of that token's budget.
type tokenRouter struct {
	tokens     []Token
	onRejected func(i int)
}

func (r *tokenRouter) usable(i int) bool {
	u := r.tokens[i].Usable
	return u == nil || u()
}

// pick returns the untried token to send with next, or -1: the usable one
// with the most calls left (the lowest index on a tie); when none is usable
// and nothing was tried yet, the one with most calls left of all.
func (r *tokenRouter) pick(tried []bool) int {
	best, bestN := -1, -1.0
	for pass := 0; pass < 2 && best < 0; pass++ {
		if pass == 1 && anyTrue(tried) {
			break
		}
		for i := range r.tokens {
			if tried[i] || (pass == 0 && !r.usable(i)) {
				continue
			}
			if n := r.tokens[i].Budget.available(); n > bestN {
				best, bestN = i, n
			}
		}
	}
	return best
}

// another reports whether a usable token is left untried.
func (r *tokenRouter) another(tried []bool) bool {
	for i := range r.tokens {
		if !tried[i] && r.usable(i) {
			return true
		}
	}
	return false
}

func anyTrue(bs []bool) bool {
	for _, b := range bs {
		if b {
			return true
		}
	}
	return false
}

// transport asks a token's budget before each attempt and tells it GitLab's
// answer. A call bound to a token (withToken) goes with it. Any other call
// goes with the token pick chooses; when GitLab answers it 401 (the token is
// rejected; onRejected hears of it) or throttles it (429 with Retry-After),
// nothing happened at GitLab, and the call is sent again with another
// usable token, if there is one.
func (r *tokenRouter) transport(next http.RoundTripper) http.RoundTripper {
	return roundTripFunc(func(req *http.Request) (*http.Response, error) {
		revoke := req.Method == http.MethodDelete || req.Context().Value(revocationKey{}) != nil
		if i, ok := req.Context().Value(tokenKey{}).(int); ok && i >= 0 && i < len(r.tokens) {
			b := r.tokens[i].Budget
			if err := b.take(revoke); err != nil {
				return nil, err
			}
			resp, err := next.RoundTrip(req)
			b.observe(resp)
			return resp, err
		}
		tried := make([]bool, len(r.tokens))
		var refused *budgetError
		sent := false
		for {
			i := r.pick(tried)
			if i < 0 {
				break
			}
			tried[i] = true
			t := r.tokens[i]
			if err := t.Budget.take(revoke); err != nil {
				var be *budgetError
				if errors.As(err, &be) && (refused == nil || be.after < refused.after) {
					refused = be
				}
				continue
			}
			out := req.Clone(req.Context())
			if sent && req.Body != nil && req.Body != http.NoBody {
				if req.GetBody == nil {
					// Cannot be sent again; never happens with client-go.
					return nil, errors.New("gitlab: a request without GetBody cannot be sent with another token")
				}
				body, err := req.GetBody()
				if err != nil {
					return nil, err
				}
				out.Body = body
			}
			secret := t.Secret()
			if secret == "" {
				return nil, errors.New("gitlab: no service token")
			}
			out.Header.Del("Authorization")
			out.Header.Set(gl.AccessTokenHeaderName, secret)
			sent = true
			resp, err := next.RoundTrip(out)
			t.Budget.observe(resp)
			if err != nil || resp == nil {
				return resp, err
			}
			switch {
			case resp.StatusCode == http.StatusUnauthorized:
				if r.onRejected != nil {
					r.onRejected(i)
				}
			case resp.StatusCode == http.StatusTooManyRequests && resp.Header.Get("Retry-After") != "":
			default:
				return resp, nil
			}
			if !r.another(tried) {
				return resp, nil
			}
			// GitLab did nothing with a request it refused so: drop the
			// answer and send it with the next token.
			_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
			resp.Body.Close()
		}
		if refused != nil {
			return nil, refused
		}
		return nil, errors.New("gitlab: no service token to send the request with")
	})
}

// indexOf returns the token whose secret in force is secret, else 0.
func (r *tokenRouter) indexOf(secret string) int {
	for i, t := range r.tokens {
		if t.Secret() == secret {
			return i
		}
	}
	return 0
}

// Tokens is how many service-account tokens the Client has.
func (c *Client) Tokens() int { return len(c.router.tokens) }

// TokenStats reports each token's budget and whether it is in rotation.
func (c *Client) TokenStats() []TokenStats {
	out := make([]TokenStats, len(c.router.tokens))
	for i, t := range c.router.tokens {
		out[i] = TokenStats{Fingerprint: fingerprint.Short(t.Secret()), Usable: c.router.usable(i), Budget: t.Budget.Stats()}
	}
	return out
}

// Account returns the Client's view for the calls about token i itself
// (GET /personal_access_tokens/self and its self-rotation): each spends
// token i's budget, whatever secret it is made with (the token in force, or
// an old one a Keeper asks about). The svctoken.Keeper of token i uses it.
func (c *Client) Account(i int) svctoken.GitLab { return account{c: c, i: i} }

type account struct {
	c *Client
	i int
}

func (a account) SelfToken(ctx context.Context, secret string) (svctoken.Info, error) {
	return a.c.selfToken(withToken(ctx, a.i), secret)
}

func (a account) RotateSelf(ctx context.Context, secret string, expiresAt time.Time) (string, svctoken.Info, error) {
	return a.c.rotateSelf(withToken(ctx, a.i), secret, expiresAt)
}
