package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

const fleetPolicy = `
rules:
  - name: app-reads-libs
    match:
      project_path: platform/app
      ref_protected: "true"
    allow:
      projects: [platform/lib, "platform/libs/*"]
      scopes: [read_repository]
      ttl: 1h
`

// TestRunnerHostDefaults: one runner host, the shipped default limits, 100
// concurrent jobs of one project each asking for 5 repositories at once over
// one Unix socket (one uid), while one more job on the same host sends
// garbage: not one valid request is answered 429, and asking again is served
// from the cache. Counts, not times.
func TestRunnerHostDefaults(t *testing.T) {
	w := newWorld(t)
	repos := []string{"platform/lib"}
	for i := 1; i <= 4; i++ {
		p := fmt.Sprintf("platform/libs/l%d", i)
		w.gl.AddProject(p)
		repos = append(repos, p)
	}
	d := w.startDaemon(t, daemonOpts{policy: fleetPolicy})
	const jobs = 100
	tokens := make([]string, jobs)
	for i := range tokens {
		tokens[i] = w.job("main", true)
	}
	hc := d.httpClient()
	hc.Transport.(*http.Transport).MaxIdleConnsPerHost = jobs * len(repos)

	exchange := func(tok, repo string) int {
		form := url.Values{
			"grant_type":         {"urn:ietf:params:oauth:grant-type:token-exchange"},
			"subject_token":      {tok},
			"subject_token_type": {"urn:ietf:params:oauth:token-type:jwt"},
			"resource":           {w.gl.URL() + "/" + repo + ".git"},
			"scope":              {"read_repository"},
		}
		resp, err := hc.PostForm(d.base()+"/v1/token", form)
		if err != nil {
			t.Error(err)
			return 0
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	wave := func(garbage int) (valid, bad map[int]int) {
		valid, bad = map[int]int{}, map[int]int{}
		var mu sync.Mutex
		var wg sync.WaitGroup
		start := make(chan struct{})
		for _, tok := range tokens {
			for _, repo := range repos {
				wg.Add(1)
				go func() {
					defer wg.Done()
					<-start
					c := exchange(tok, repo)
					mu.Lock()
					valid[c]++
					mu.Unlock()
				}()
			}
		}
		for i := range garbage {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				c := exchange(fmt.Sprintf("eyJhbGciOiJSUzI1NiJ9.garbage%d.x", i), repos[0])
				mu.Lock()
				bad[c]++
				mu.Unlock()
			}()
		}
		close(start)
		wg.Wait()
		return valid, bad
	}

	valid, bad := wave(300)
	if valid[200] != jobs*len(repos) {
		t.Fatalf("first wave: statuses %v of %d valid requests, want all 200 (garbage got %v)", valid, jobs*len(repos), bad)
	}
	if bad[200] != 0 || bad[400]+bad[429] != 300 {
		t.Fatalf("garbage got %v, want only 400 or 429", bad)
	}
	// The jobs are of one project passing one rule: with reuse: project
	// (the default) they share a deploy token per repository. A shared
	// credential ends on a whole minute no later than its holders' ID
	// tokens; the 100 tokens were issued within moments, so at most a minute
	// boundary between them splits them in two.
	creates := countCreates(w)
	if creates < len(repos) || creates > 2*len(repos) {
		t.Fatalf("%d deploy tokens created for %d jobs × %d repositories of one project, want %d (one per repository, two across a minute boundary)", creates, jobs, len(repos), len(repos))
	}
	valid, _ = wave(0)
	if valid[200] != jobs*len(repos) {
		t.Fatalf("second wave (cached): statuses %v, want all 200", valid)
	}
	if again := countCreates(w); again != creates {
		t.Fatalf("the cached wave created %d more tokens", again-creates)
	}
	metrics := d.metrics(t)
	for _, reason := range []string{"job_mints", "project_mints", "gitlab", "gitlab_budget", "service"} {
		if strings.Contains(metrics, `gltoken_rate_limited_total{reason="`+reason+`"}`) {
			t.Errorf("valid requests were limited: %s", grepLines(metrics, "gltoken_rate_limited_total"))
		}
	}
	// Each job's token was verified once: the cached wave checked no signature.
	if hits := metricValue(t, metrics, "gltoken_id_token_cache_hits_total"); hits < float64(jobs*len(repos)) {
		t.Errorf("ID-token cache hits %v, want at least %d", hits, jobs*len(repos))
	}
	t.Logf("%d requests, %d deploy tokens created, garbage: %v; %s", 2*jobs*len(repos), creates, bad, grepLines(metrics, "gltoken_rate_limited_total"))
}

func countCreates(w *world) int {
	n := 0
	for _, r := range w.gl.Requests() {
		if r.Method == http.MethodPost && strings.HasSuffix(r.Path, "/deploy_tokens") && r.Status == http.StatusCreated {
			n++
		}
	}
	return n
}

// metricValue reads one unlabelled sample from a scrape.
func metricValue(t *testing.T, scrape, name string) float64 {
	t.Helper()
	for _, l := range strings.Split(scrape, "\n") {
		if v, ok := strings.CutPrefix(l, name+" "); ok {
			var f float64
			if _, err := fmt.Sscan(v, &f); err != nil {
				t.Fatalf("%s: %v", l, err)
			}
			return f
		}
	}
	t.Fatalf("no %s in /metrics", name)
	return 0
}

// metrics scrapes /metrics.
func (d *daemon) metrics(t *testing.T) string {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		resp, err := d.httpClient().Get(d.base() + "/metrics")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return string(b)
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET /metrics: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestRevokeLoopIsCapped: a job looping exchange → revoke on one project
// (each cycle a GitLab create and a revoke) is stopped after the default
// three re-mints; its other targets and other jobs are not.
func TestRevokeLoopIsCapped(t *testing.T) {
	w := newWorld(t)
	d := w.startDaemon(t, daemonOpts{})
	lib := w.gl.URL() + "/platform/lib.git"
	job := w.job("main", true)
	hc := d.httpClient()
	var codes []int
	for range 8 {
		resp, body := d.exchange(job, lib, "read_repository")
		codes = append(codes, resp.StatusCode)
		if resp.StatusCode != 200 {
			if resp.StatusCode != 429 || resp.Header.Get("Retry-After") == "" {
				t.Fatalf("exchange %d: %d %s", len(codes), resp.StatusCode, body)
			}
			continue
		}
		var tok struct {
			AccessToken string `json:"access_token"`
		}
		if err := json.Unmarshal([]byte(body), &tok); err != nil {
			t.Fatal(err)
		}
		r, err := hc.PostForm(d.base()+"/v1/revoke", url.Values{"token": {tok.AccessToken}})
		if err != nil || r.StatusCode != 200 {
			t.Fatalf("revoke: %v %v", r, err)
		}
		r.Body.Close()
	}
	if want := []int{200, 200, 200, 200, 429, 429, 429, 429}; !slices.Equal(codes, want) {
		t.Fatalf("exchange → revoke loop: %v, want %v", codes, want)
	}
	if n := countCreates(w); n != 4 {
		t.Fatalf("%d GitLab creates, want 4 (one mint, three re-mints)", n)
	}
	if resp, body := d.exchange(job, w.gl.URL()+"/platform/app.git", "read_repository"); resp.StatusCode != 200 {
		t.Fatalf("the same job on another project: %d %s", resp.StatusCode, body)
	}
	if resp, body := d.exchange(w.job("main", true), lib, "read_repository"); resp.StatusCode != 200 {
		t.Fatalf("another job on the same project: %d %s", resp.StatusCode, body)
	}
	if m := d.metrics(t); !strings.Contains(m, `gltoken_rate_limited_total{reason="remints_after_revoke"} 4`) {
		t.Fatalf("metrics: %s", grepLines(m, "gltoken_rate_limited_total"))
	}
	if !strings.Contains(d.logs.String(), `"reason":"remints_after_revoke"`) {
		t.Fatal("no debug log line names the reason of the 429")
	}
}
