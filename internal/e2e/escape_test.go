package e2e

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"
)

const escapePolicy = `
rules:
  - name: api-short
    match:
      project_path: platform/app
      ref: escape
    allow:
      projects: [platform/deploy]
      scopes: [api]
      ttl: 12s
      access_level: developer
`

// TestSelfRotatedCredentialDoesNotEscape reproduces the escape of issue 9.1:
// the daemon mints an api-scope project access token, the job rotates it
// itself (POST /projects/:id/access_tokens/self/rotate) with a year's expiry,
// and the successor (new id, same name and bot user) must still be dead at
// the TTL plus one reaper interval.
func TestSelfRotatedCredentialDoesNotEscape(t *testing.T) {
	w := newWorld(t)
	d := w.startDaemon(t, daemonOpts{policy: escapePolicy, reaperInterval: "1s"})
	start := time.Now()
	resp, body := d.exchange(w.job("escape", false), w.gl.URL()+"/platform/deploy.git", "api")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("exchange: %d %s", resp.StatusCode, body)
	}
	var tok struct {
		AccessToken string `json:"access_token"`
		ExpiresIn   int    `json:"expires_in"`
	}
	if err := json.Unmarshal([]byte(body), &tok); err != nil {
		t.Fatal(err)
	}

	// The job, with the minted secret, rotates it a year ahead.
	year := time.Now().UTC().AddDate(0, 0, 365).Format("2006-01-02")
	req, _ := http.NewRequest(http.MethodPost, w.gl.URL()+"/api/v4/projects/platform%2Fdeploy/access_tokens/self/rotate?expires_at="+year, nil)
	req.Header.Set("PRIVATE-TOKEN", tok.AccessToken)
	rr, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var succ struct {
		ID    int64  `json:"id"`
		Name  string `json:"name"`
		Token string `json:"token"`
	}
	_ = json.NewDecoder(rr.Body).Decode(&succ)
	rr.Body.Close()
	if rr.StatusCode != http.StatusOK || succ.Token == "" || !strings.HasPrefix(succ.Name, "gltoken-") {
		t.Fatalf("self rotation: %d %+v", rr.StatusCode, succ)
	}

	// TTL plus one reaper interval, plus slack for a loaded machine.
	deadline := start.Add(time.Duration(tok.ExpiresIn)*time.Second + time.Second + 3*time.Second)
	for {
		live := w.liveMinted()
		if len(live) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("escaped: %d live token(s) of the family after TTL + one reaper interval: %+v\n%s", len(live), live, d.logs.String())
		}
		time.Sleep(200 * time.Millisecond)
	}
	// The successor's secret no longer works.
	check, _ := http.NewRequest(http.MethodGet, w.gl.URL()+"/api/v4/projects/platform%2Fdeploy", nil)
	check.Header.Set("PRIVATE-TOKEN", succ.Token)
	cr, err := http.DefaultClient.Do(check)
	if err != nil {
		t.Fatal(err)
	}
	cr.Body.Close()
	if cr.StatusCode != http.StatusUnauthorized {
		t.Fatalf("successor still authenticates: %d", cr.StatusCode)
	}
}
