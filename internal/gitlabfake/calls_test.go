package gitlabfake

import (
	"maps"
	"net/http"
	"testing"
)

// TestCallsCountsByRoute: Calls counts the API requests since a mark by the
// route that answered them (an unknown route counts as none), so a test can
// say what a piece of work cost in GitLab API calls.
func TestCallsCountsByRoute(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	doRaw(t, "GET", f.s.URL()+"/api/v4/projects/1", f.svcPAT, "", "")
	mark := len(f.s.Requests())
	for _, path := range []string{"/api/v4/projects/1", "/api/v4/projects/platform%2Fapp", "/api/v4/projects/1/deploy_tokens", "/api/v4/projects/1/variables"} {
		doRaw(t, "GET", f.s.URL()+path, f.svcPAT, "", "")
	}
	want := map[string]int{"GET /api/v4/projects/:id": 2, "GET /api/v4/projects/:id/deploy_tokens": 1}
	if got := f.s.Calls(mark); !maps.Equal(got, want) {
		t.Fatalf("Calls = %v, want %v", got, want)
	}
	reqs := f.s.Requests()
	if last := reqs[len(reqs)-1]; last.Status != http.StatusNotImplemented || last.Route != "" {
		t.Fatalf("the unknown route's request: %+v", last)
	}
	if got := f.s.Calls(len(reqs) + 5); len(got) != 0 {
		t.Fatalf("Calls past the end = %v", got)
	}
}
