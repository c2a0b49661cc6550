package e2e

import (
	"maps"
	"net/url"
	"strings"
	"testing"
)

// TestGitLabCallsPerMint counts what each kind of mint (and its
// revocation) costs in GitLab API calls through the real daemon: GitLab's
// API quota is the service account's, shared with everything else it does.
// A mint looks its project or group up once (for the id the ledger keeps,
// and to refuse an old path GitLab would redirect) and creates once; an
// access token also reads its bot user; a pooled slot is handed out by one
// rotation. One call more anywhere fails this test.
func TestGitLabCallsPerMint(t *testing.T) {
	w := newWorld(t)
	d := w.startDaemon(t, daemonOpts{policy: perJobPolicy})
	const (
		getProject = "GET /api/v4/projects/:id"
		getGroup   = "GET /api/v4/groups/:id"
		getUser    = "GET /api/v4/users/:id"
		rotate     = "POST /api/v4/projects/:id/access_tokens/:token_id/rotate"
	)
	// calls counts the API calls of f, leaving out the daemon's own
	// background work (job polls, the service token's checks).
	calls := func(f func()) map[string]int {
		mark := len(w.gl.Requests())
		f()
		got := w.gl.Calls(mark)
		for route := range got {
			if strings.Contains(route, "/jobs/") || strings.Contains(route, "/personal_access_tokens/") {
				delete(got, route)
			}
		}
		return got
	}
	for _, tt := range []struct {
		name, repo, scope string
		mint, revoke      map[string]int
	}{
		{"project deploy token", "/platform/lib.git", "read_repository",
			map[string]int{getProject: 1, "POST /api/v4/projects/:id/deploy_tokens": 1},
			map[string]int{"DELETE /api/v4/projects/:id/deploy_tokens/:token_id": 1}},
		{"group deploy token", "/platform/tools/cli.git", "read_repository",
			map[string]int{getGroup: 1, "POST /api/v4/groups/:id/deploy_tokens": 1},
			map[string]int{"DELETE /api/v4/groups/:id/deploy_tokens/:token_id": 1}},
		{"project access token, a new pool slot", "/platform/deploy.git", "write_repository",
			map[string]int{getProject: 1, "POST /api/v4/projects/:id/access_tokens": 1, getUser: 1},
			map[string]int{rotate: 1}},
		{"project access token, the idle pool slot", "/platform/deploy.git", "write_repository",
			map[string]int{getProject: 1, rotate: 1},
			map[string]int{rotate: 1}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var body string
			mint := calls(func() {
				r, b := d.exchange(w.job("main", true), w.gl.URL()+tt.repo, tt.scope)
				if r.StatusCode != 200 {
					t.Fatalf("exchange: %d %s", r.StatusCode, b)
				}
				body = b
			})
			if !maps.Equal(mint, tt.mint) {
				t.Errorf("the mint called GitLab %v, want %v", mint, tt.mint)
			}
			revoke := calls(func() {
				resp, err := d.httpClient().PostForm(d.base()+"/v1/revoke", url.Values{"token": {accessToken(t, body)}})
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
			})
			if !maps.Equal(revoke, tt.revoke) {
				t.Errorf("the revocation called GitLab %v, want %v", revoke, tt.revoke)
			}
		})
	}
}
