package exchange

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

type fakeLimiter struct {
	mu      sync.Mutex
	asked   []MintSubject
	refuse  string // reason to refuse with; "" admits
	revoked []string
}

var _ MintLimiter = (*fakeLimiter)(nil)

func (l *fakeLimiter) AllowMint(m MintSubject) (bool, time.Duration, string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.asked = append(l.asked, m)
	if l.refuse != "" {
		return false, 1500 * time.Millisecond, l.refuse
	}
	return true, 0, ""
}

func (l *fakeLimiter) ClientRevoked(job, owner string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.revoked = append(l.revoked, job+" "+owner)
}

// TestMintLimiterOnlyForMints: the limiter is asked before a mint (before
// any GitLab call) with what the token proves, never for a cached
// credential; a refusal is a 429 that names its limit; a client revoke is
// reported so re-mints can be capped.
func TestMintLimiterOnlyForMints(t *testing.T) {
	f := newFixture(t)
	lim := &fakeLimiter{}
	f.svc.cfg.Limiter = lim
	lib := "https://gitlab.example.com/platform/lib.git"
	granted, err := f.exchange("job-token", lib, "read_repository")
	if err != nil {
		t.Fatal(err)
	}
	want := MintSubject{Job: "job:12", Project: "7", Owner: "platform/lib"}
	if len(lim.asked) != 1 || lim.asked[0] != want {
		t.Fatalf("limiter asked %v, want once for %v", lim.asked, want)
	}
	for range 5 {
		if _, err := f.exchange("job-token", lib, "read_repository"); err != nil {
			t.Fatal(err)
		}
	}
	if len(lim.asked) != 1 {
		t.Fatalf("cached credentials were limited: asked %d times", len(lim.asked))
	}

	lim.refuse = LimitJobMints
	_, err = f.exchange("job-token", "https://gitlab.example.com/platform/libs/x", "read_repository")
	var e *Error
	if !errors.As(err, &e) || e.Code != CodeRateLimited || e.LimitReason() != LimitJobMints || e.RetryAfter < time.Second {
		t.Fatalf("refused mint: %v (reason %q), want %s with Retry-After", err, e.LimitReason(), CodeRateLimited)
	}
	if f.minter.mints.Load() != 1 || len(f.minter.owners) != 1 {
		t.Fatalf("a refused mint reached GitLab: %d mints, %d owners resolved", f.minter.mints.Load(), len(f.minter.owners))
	}

	if err := f.svc.Revoke(context.Background(), "r2", granted.AccessToken, "uid=1"); err != nil {
		t.Fatal(err)
	}
	if len(lim.revoked) != 1 || lim.revoked[0] != "job:12 platform/lib" {
		t.Fatalf("ClientRevoked calls %v, want one for job:12 on platform/lib", lim.revoked)
	}
}
