// Command loadgen measures exchanged under load on this machine: it builds the
// binaries, starts the GitLab stand-in and exchanged (embedded ledger), and
// drives POST /v1/token over the Unix socket in three phases, each bounded in
// requests and time:
//
//   - cached: one job asking again and again (verify + policy + cache);
//   - mint:   a new job each request (verify + policy + ledger + GitLab create);
//   - denied: requests the policy refuses (verify + policy).
//
// It then times `git credential fill` through git-credential-gltoken next to
// a static helper. It prints its figures; it asserts nothing. `make bench`
// runs it.
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"gltoken.dev/gltoken/internal/gitlabfake"
)

const audience = "https://gltoken.example.com"

func main() {
	requests := flag.Int("requests", 3000, "requests per phase (at most)")
	duration := flag.Duration("duration", 10*time.Second, "time per phase (at most)")
	workers := flag.Int("c", 8, "concurrent clients")
	fills := flag.Int("fills", 40, "git credential fill runs per helper")
	flag.Parse()
	if err := run(*requests, *duration, *workers, *fills); err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(1)
	}
}

func run(requests int, duration time.Duration, workers, fills int) error {
	dir, err := os.MkdirTemp("", "gltoken-load-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	root, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}").Output()
	if err != nil {
		return fmt.Errorf("run from the repository: %w", err)
	}
	bin := filepath.Join(dir, "bin")
	build := exec.Command("go", "build", "-trimpath", "-o", bin+"/", "./cmd/exchanged", "./cmd/git-credential-gltoken")
	build.Dir, build.Stderr = strings.TrimSpace(string(root)), os.Stderr
	if err := build.Run(); err != nil {
		return err
	}

	gl, err := gitlabfake.New(gitlabfake.Options{RepoRoot: filepath.Join(dir, "repos")})
	if err != nil {
		return err
	}
	defer gl.Close()
	// GitLab's default of 2,000 API requests a minute per user would cap the
	// mint phase; measure the daemon, not that limit.
	gl.SetRateLimit(1_000_000)
	app := gl.AddProject("platform/app")
	gl.AddProject("platform/lib")
	bot := gl.AddUser("gltoken-bot")
	gl.AddMember(bot, "platform", 40)
	botToken := gl.CreatePersonalAccessToken(bot, "service-account", []string{"api"}, nil)

	sockDir, err := os.MkdirTemp("", "gl-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(sockDir)
	sock := filepath.Join(sockDir, "x.sock")
	policy := `rules:
  - name: app-reads-lib
    match: {project_path: platform/app}
    allow: {projects: [platform/lib], scopes: [read_repository], ttl: 1h}
`
	cfg := fmt.Sprintf("listen: [\"unix://%s\"]\ngitlab: {url: %q, token_file: tok}\naudience: %s\npolicy_file: policy.yaml\nstore: {driver: sqlite, dsn: state.db}\nlog_level: warn\nrate_limit: {per_second: 1000000, burst: 1000000}\n",
		sock, gl.URL(), audience)
	for name, data := range map[string]string{"exchanged.yaml": cfg, "policy.yaml": policy, "tok": botToken} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o600); err != nil {
			return err
		}
	}
	var logs bytes.Buffer
	daemon := exec.Command(filepath.Join(bin, "exchanged"), "serve", "--config", filepath.Join(dir, "exchanged.yaml"))
	daemon.Stdout, daemon.Stderr = &logs, &logs
	if err := daemon.Start(); err != nil {
		return err
	}
	defer func() { _ = daemon.Process.Signal(syscall.SIGTERM); _ = daemon.Wait() }()
	hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		MaxIdleConnsPerHost: workers * 2,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		}}}
	if err := waitReady(hc); err != nil {
		return fmt.Errorf("%w\n%s", err, logs.String())
	}

	job := func() string {
		return gl.IssueIDToken(gitlabfake.Job{Project: app, Ref: "main", RefProtected: true, Audience: []string{audience}, Timeout: time.Hour})
	}
	lib := gl.URL() + "/platform/lib.git"
	fmt.Printf("exchanged load, %d clients over a Unix socket, at most %d requests or %s a phase (GitLab: the in-process stand-in)\n", workers, requests, duration)
	shared := job()
	phase(hc, "cached", requests, duration, workers, func(int) (string, string) { return shared, lib })
	// Pre-issue the tokens so the stand-in's signing is not measured.
	tokens := make([]string, requests)
	for i := range tokens {
		tokens[i] = job()
	}
	phase(hc, "mint", requests, duration, workers, func(i int) (string, string) { return tokens[i], lib })
	phase(hc, "denied", requests, duration, workers, func(int) (string, string) { return shared, gl.URL() + "/platform/other.git" })

	return fillTimes(bin, dir, gl.URL(), sock, shared, fills)
}

func waitReady(hc *http.Client) error {
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if resp, err := hc.Get("http://gltoken/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
		}
	}
	return fmt.Errorf("exchanged not ready")
}

// phase sends at most n requests within d from c workers and prints the
// throughput and latency percentiles.
func phase(hc *http.Client, name string, n int, d time.Duration, c int, req func(i int) (token, resource string)) {
	var next atomic.Int64
	var mu sync.Mutex
	lat := make([]time.Duration, 0, n)
	statuses := map[int]int{}
	deadline := time.Now().Add(d)
	start := time.Now()
	var wg sync.WaitGroup
	for range c {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n || time.Now().After(deadline) {
					return
				}
				tok, res := req(i)
				form := url.Values{"grant_type": {"urn:ietf:params:oauth:grant-type:token-exchange"}, "subject_token": {tok},
					"subject_token_type": {"urn:ietf:params:oauth:token-type:jwt"}, "resource": {res}, "scope": {"read_repository"}}
				t0 := time.Now()
				resp, err := hc.PostForm("http://gltoken/v1/token", form)
				el := time.Since(t0)
				status := 0
				if err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					status = resp.StatusCode
				}
				mu.Lock()
				lat = append(lat, el)
				statuses[status]++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	total := time.Since(start)
	slices.Sort(lat)
	pct := func(p float64) time.Duration {
		if len(lat) == 0 {
			return 0
		}
		return lat[min(len(lat)-1, int(float64(len(lat))*p))]
	}
	fmt.Printf("  %-7s %6d requests in %6.2fs = %7.0f req/s   p50 %7s  p95 %7s  p99 %7s  statuses %v\n",
		name, len(lat), total.Seconds(), float64(len(lat))/total.Seconds(),
		pct(.50).Round(10*time.Microsecond), pct(.95).Round(10*time.Microsecond), pct(.99).Round(10*time.Microsecond), statuses)
}

// fillTimes runs `git credential fill` through gltoken (the daemon answers
// from its cache) and through a static helper, and prints the medians.
func fillTimes(bin, dir, glURL, sock, idToken string, n int) error {
	u, _ := url.Parse(glURL)
	input := fmt.Sprintf("protocol=http\nhost=%s\npath=platform/lib.git\n\n", u.Host)
	home := filepath.Join(dir, "home")
	if err := os.MkdirAll(home, 0o700); err != nil {
		return err
	}
	static := filepath.Join(dir, "static-helper")
	if err := os.WriteFile(static, []byte("#!/bin/sh\ntest \"$1\" = get && printf 'username=u\\npassword=p\\n'\n"), 0o700); err != nil {
		return err
	}
	measure := func(helper string) (time.Duration, error) {
		var times []time.Duration
		for range n {
			cmd := exec.Command("git", "-c", "credential.helper=", "-c", "credential.helper="+helper, "-c", "credential.useHttpPath=true", "credential", "fill")
			cmd.Env = append(os.Environ(), "HOME="+home, "GIT_CONFIG_NOSYSTEM=1", "GIT_TERMINAL_PROMPT=0",
				"GLTOKEN_ID_TOKEN="+idToken, "GLTOKEN_DAEMON=unix://"+sock)
			cmd.Stdin = strings.NewReader(input)
			var errb bytes.Buffer
			cmd.Stderr = &errb
			t0 := time.Now()
			if err := cmd.Run(); err != nil {
				return 0, fmt.Errorf("git credential fill with %s: %v: %s", helper, err, errb.String())
			}
			times = append(times, time.Since(t0))
		}
		slices.Sort(times)
		return times[len(times)/2], nil
	}
	g, err := measure(filepath.Join(bin, "git-credential-gltoken"))
	if err != nil {
		return err
	}
	s, err := measure(static)
	if err != nil {
		return err
	}
	fmt.Printf("git credential fill, median of %d runs: git-credential-gltoken %s, a static shell helper %s (difference %s)\n",
		n, g.Round(10*time.Microsecond), s.Round(10*time.Microsecond), (g - s).Round(10*time.Microsecond))
	return nil
}
