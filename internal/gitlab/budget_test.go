package gitlab

import (
	"errors"
	"net/http"
	"sync"
	"testing"
	"time"

	"gltoken.dev/gltoken/internal/exchange"
	"gltoken.dev/gltoken/internal/gitlabfake"
	"gltoken.dev/gltoken/internal/ledger"
)

// TestNotFoundIsCachedBriefly: asking again and again for a project that
// does not exist (under an allowed glob) costs one GitLab call per path per
// NotFoundTTL; a project that exists is looked up every time.
func TestNotFoundIsCachedBriefly(t *testing.T) {
	var mu sync.Mutex
	now := time.Now().UTC().Truncate(time.Second)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	s := gitlabfake.Start(t, gitlabfake.Options{})
	svc := s.AddUser("gltoken-svc")
	s.AddProject("platform/lib")
	s.AddMember(svc, "platform", gitlabfake.Maintainer)
	c := newTestClient(t, s.URL(), s.CreatePersonalAccessToken(svc, "gltoken", []string{"api"}, nil), clock)
	gets := func() int {
		n := 0
		for _, r := range s.Requests() {
			if r.Method == http.MethodGet {
				n++
			}
		}
		return n
	}
	for range 20 {
		if _, err := c.ResolveOwner(t.Context(), ledger.ProjectDeployToken, "platform/nope"); !errors.Is(err, exchange.ErrNotFound) {
			t.Fatalf("nonexistent project: %v, want ErrNotFound", err)
		}
	}
	if n := gets(); n != 1 {
		t.Fatalf("20 lookups of a nonexistent project cost %d GitLab calls, want 1", n)
	}
	for range 3 {
		if _, err := c.ResolveOwner(t.Context(), ledger.ProjectDeployToken, "platform/lib"); err != nil {
			t.Fatal(err)
		}
	}
	if n := gets(); n != 4 {
		t.Fatalf("an existing project must be asked every time: %d calls, want 4", n)
	}
	// Created meanwhile: found once the TTL is over.
	s.AddProject("platform/nope")
	mu.Lock()
	now = now.Add(NotFoundTTL)
	mu.Unlock()
	if _, err := c.ResolveOwner(t.Context(), ledger.ProjectDeployToken, "platform/nope"); err != nil {
		t.Fatalf("after the TTL: %v", err)
	}
}
