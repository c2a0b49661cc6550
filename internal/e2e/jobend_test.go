package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"gltoken.dev/gltoken/internal/gitlabfake"
)

const webhookSecret = "e2e-webhook-secret-0123456789abcdef"

// jobEndDaemon starts a daemon on loopback TCP (GitLab's webhook posts to
// it) with the webhook secret file, polling GitLab's jobs API every poll.
func (w *world) jobEndDaemon(t testing.TB, poll string, webhook bool, policy string) *daemon {
	t.Helper()
	extra := "  job_poll_interval: " + poll + "\n"
	if webhook {
		writeFile(t, filepath.Join(w.dir, "webhook-secret"), webhookSecret+"\n", 0o600)
		extra += "  webhook_secret_file: webhook-secret\n"
	}
	return w.startDaemon(t, daemonOpts{listen: fmt.Sprintf("tcp://127.0.0.1:%d", freePort(t)), policy: policy, gitlab: extra})
}

// jobWith sets the job's id.
func jobWith(id int64) func(*gitlabfake.Job) { return func(j *gitlabfake.Job) { j.JobID = id } }

// mustExchange exchanges the ID token for platform/lib and returns the
// GitLab token it got.
func mustExchange(t *testing.T, w *world, d *daemon, idToken string) {
	t.Helper()
	resp, body := d.exchange(idToken, w.gl.URL()+"/platform/lib.git", "read_repository")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("exchange: %d %s", resp.StatusCode, body)
	}
}

// waitLive waits (up to limit) until n tokens minted by gltoken are live.
func waitLive(t *testing.T, w *world, d *daemon, n int, limit time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for len(w.liveMinted()) != n {
		if time.Since(start) > limit {
			t.Fatalf("live minted tokens = %d after %s, want %d; daemon log:\n%s", len(w.liveMinted()), limit, n, d.logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return time.Since(start)
}

// waitLog waits until the daemon has logged want (it logs after GitLab
// answered, so a moment after the stand-in shows the effect).
func waitLog(t testing.TB, d *daemon, want string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(d.logs.String(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("the daemon never logged %s:\n%s", want, d.logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestJobEndRevokesViaWebhook: GitLab's job event ends the job's credential
// at once, long before its TTL (1h) and before any poll (60s).
func TestJobEndRevokesViaWebhook(t *testing.T) {
	w := newWorld(t)
	d := w.jobEndDaemon(t, "60s", true, perJobPolicy) // one credential per job: the other job's stays
	w.gl.AddWebhook(gitlabfake.Webhook{URL: d.url + "/v1/gitlab/events", Token: webhookSecret})
	mustExchange(t, w, d, w.job("main", true, jobWith(7001)))
	other := w.job("main", true, jobWith(7002))
	mustExchange(t, w, d, other)
	waitLive(t, w, d, 2, 0)

	if err := w.gl.EndJob(7001, "success"); err != nil {
		t.Fatal(err)
	}
	waitLive(t, w, d, 1, 20*time.Second)
	w.gl.WaitHooks()
	if ds := w.gl.HookDeliveries(); len(ds) != 1 || ds[0].Code != http.StatusOK || ds[0].Event != "Job Hook" {
		t.Fatalf("deliveries %+v", ds)
	}
	waitLog(t, d, `"outcome":"job_ended"`)
	// The other job's credential lives on until its job ends.
	if err := w.gl.EndJob(7002, "canceled"); err != nil {
		t.Fatal(err)
	}
	waitLive(t, w, d, 0, 20*time.Second)
}

// TestJobEndRevokesViaPoll: without a webhook, the poll of GitLab's jobs
// API finds the job's end.
func TestJobEndRevokesViaPoll(t *testing.T) {
	w := newWorld(t)
	d := w.jobEndDaemon(t, "5s", false, "")
	mustExchange(t, w, d, w.job("main", true, jobWith(7101)))
	waitLive(t, w, d, 1, 0)
	if err := w.gl.EndJob(7101, "failed"); err != nil {
		t.Fatal(err)
	}
	// One interval, plus slack for a loaded machine.
	waitLive(t, w, d, 0, 5*time.Second+20*time.Second)
	waitLog(t, d, `"via":"poll"`)
}

// TestWebhookWithoutTheSecretChangesNothing: a job event with a missing or
// wrong X-Gitlab-Token is answered 401 and revokes nothing.
func TestWebhookWithoutTheSecretChangesNothing(t *testing.T) {
	w := newWorld(t)
	d := w.jobEndDaemon(t, "60s", true, perJobPolicy)
	w.gl.AddWebhook(gitlabfake.Webhook{URL: d.url + "/v1/gitlab/events", Token: webhookSecret + "-not"})
	w.gl.AddWebhook(gitlabfake.Webhook{URL: d.url + "/v1/gitlab/events"})
	mustExchange(t, w, d, w.job("main", true, jobWith(7201)))
	if err := w.gl.EndJob(7201, "success"); err != nil {
		t.Fatal(err)
	}
	w.gl.WaitHooks()
	ds := w.gl.HookDeliveries()
	if len(ds) != 2 {
		t.Fatalf("deliveries %+v", ds)
	}
	for _, dl := range ds {
		if dl.Code != http.StatusUnauthorized {
			t.Errorf("delivery answered %d, want 401", dl.Code)
		}
	}
	if n := len(w.liveMinted()); n != 1 {
		t.Fatalf("live = %d after refused events, want 1", n)
	}
	if strings.Contains(d.logs.String(), webhookSecret) {
		t.Fatal("the daemon logged the webhook secret")
	}

	// SIGHUP reads the secret file again: now the first hook's token is right.
	writeFile(t, filepath.Join(w.dir, "webhook-secret"), webhookSecret+"-not\n", 0o600)
	if err := d.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitLog(t, d, "webhook secret reloaded")
	mustExchange(t, w, d, w.job("main", true, jobWith(7202)))
	waitLive(t, w, d, 2, 0)
	if err := w.gl.EndJob(7202, "success"); err != nil {
		t.Fatal(err)
	}
	waitLive(t, w, d, 1, 20*time.Second)
}

const runningPolicy = `
rules:
  - name: running-only
    require_running_job: true
    match:
      project_path: platform/app
    allow:
      projects: [platform/lib]
      scopes: [read_repository]
      ttl: 1h
`

// TestRequireRunningJobRefusesFinishedJob: an ID token copied out of a
// finished job's log gets nothing.
func TestRequireRunningJobRefusesFinishedJob(t *testing.T) {
	w := newWorld(t)
	d := w.jobEndDaemon(t, "60s", true, runningPolicy)
	w.gl.AddWebhook(gitlabfake.Webhook{URL: d.url + "/v1/gitlab/events", Token: webhookSecret})
	tok := w.job("main", true, jobWith(7301))
	mustExchange(t, w, d, tok)
	if err := w.gl.EndJob(7301, "success"); err != nil {
		t.Fatal(err)
	}
	w.gl.WaitHooks()
	waitLive(t, w, d, 0, 20*time.Second)
	resp, body := d.exchange(tok, w.gl.URL()+"/platform/lib.git", "read_repository")
	var e struct{ Error, ErrorDescription string }
	_ = json.Unmarshal([]byte(body), &struct {
		Error            *string `json:"error"`
		ErrorDescription *string `json:"error_description"`
	}{&e.Error, &e.ErrorDescription})
	if resp.StatusCode != http.StatusBadRequest || e.Error != "invalid_grant" || !strings.Contains(e.ErrorDescription, "no longer running") {
		t.Fatalf("copied token of a finished job: %d %s", resp.StatusCode, body)
	}
	if n := len(w.liveMinted()); n != 0 {
		t.Fatalf("live = %d, want 0", n)
	}

}

// TestRequireRunningJobAsksTheJobsAPI: without a webhook, GitLab's jobs API
// tells that the job finished.
func TestRequireRunningJobAsksTheJobsAPI(t *testing.T) {
	w := newWorld(t)
	d := w.jobEndDaemon(t, "60s", false, runningPolicy)
	tok := w.job("main", true, jobWith(7302))
	if err := w.gl.EndJob(7302, "failed"); err != nil {
		t.Fatal(err)
	}
	resp, body := d.exchange(tok, w.gl.URL()+"/platform/lib.git", "read_repository")
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, "no longer running (GitLab says failed)") {
		t.Fatalf("finished job: %d %s", resp.StatusCode, body)
	}
	mustExchange(t, w, d, w.job("main", true, jobWith(7303)))
}
