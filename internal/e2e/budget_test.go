package e2e

import (
	"encoding/json"
	"regexp"
	"strings"
	"testing"
)

// TestBudgetSpentServesCached: with a small GitLab API budget
// (gitlab.api_budget_per_minute), new jobs' mints are answered 429 with
// Retry-After once it is spent, without a call to GitLab, while a job that
// already holds a credential is still served it from the cache.
func TestBudgetSpentServesCached(t *testing.T) {
	w := newWorld(t)
	d := w.startDaemon(t, daemonOpts{policy: perJobPolicy, gitlab: "  api_budget_per_minute: 10\n"})
	lib := w.gl.URL() + "/platform/lib.git"
	first := w.job("main", true)
	resp, body := d.exchange(first, lib, "read_repository")
	if resp.StatusCode != 200 {
		t.Fatalf("first mint: %d %s", resp.StatusCode, body)
	}
	spent := false
	for i := 0; i < 20 && !spent; i++ {
		resp, body := d.exchange(w.job("main", true), lib, "read_repository")
		switch {
		case resp.StatusCode == 200:
		case resp.StatusCode == 429 && resp.Header.Get("Retry-After") != "" && strings.Contains(body, `"error"`):
			spent = true
		default:
			t.Fatalf("mint %d: %d %s", i, resp.StatusCode, body)
		}
	}
	if !spent {
		t.Fatal("20 mints on a budget of 10 GitLab calls a minute were all served")
	}
	before := len(w.gl.Requests())
	resp, again := d.exchange(first, lib, "read_repository")
	// The same credential (expires_in counts down between the two answers).
	if resp.StatusCode != 200 || accessToken(t, again) != accessToken(t, body) {
		t.Fatalf("the cached credential with the budget spent: %d %s", resp.StatusCode, again)
	}
	if n := len(w.gl.Requests()); n != before {
		t.Fatalf("serving a cached credential cost %d GitLab calls", n-before)
	}
	m := d.metrics(t)
	tok := `\{token="sha256:[0-9a-f]{16}",token_file="[^"]+/gitlab-token"\}`
	for _, want := range []string{`gltoken_rate_limited_total\{reason="gitlab_budget"\}`,
		`gltoken_gitlab_budget_requests_total\{outcome="budget_spent",token="sha256:[0-9a-f]{16}",token_file="[^"]+"\} [1-9]`,
		`gltoken_gitlab_budget_per_minute` + tok + ` 10$`, `gltoken_gitlab_budget_remaining` + tok + ` `,
		`gltoken_gitlab_ratelimit_remaining` + tok + ` -1$`} {
		if !regexp.MustCompile(`(?m)^` + want).MatchString(m) {
			t.Fatalf("metrics lack %s:\n%s", want, grepLines(m, "gitlab"))
		}
	}
}

// accessToken returns the access_token of a token endpoint's JSON answer.
func accessToken(t *testing.T, body string) string {
	t.Helper()
	var v struct {
		AccessToken string `json:"access_token"`
	}
	if err := json.Unmarshal([]byte(body), &v); err != nil || v.AccessToken == "" {
		t.Fatalf("not a token answer: %v", err)
	}
	return v.AccessToken
}
