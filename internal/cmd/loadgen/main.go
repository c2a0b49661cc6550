// Command loadgen measures exchanged under load on this machine. It builds
// the binaries, starts the GitLab stand-in and exchanged (the real daemon,
// internal/daemon, as a subprocess; embedded SQLite ledger) and drives
// POST /v1/token over a Unix socket. It prints, in one run:
//
//   - runner host: 100 concurrent jobs × 5 repositories at once, against a
//     daemon with the DEFAULT configuration (no rate_limit section) and the
//     stand-in's default API rate limit: requests, errors, 429s, p50/p99;
//   - reuse: the stand-in's deploy-token creates for 50 read jobs on one
//     target and its access-token creates and bot users for 1,000 push jobs
//     on one target (same default daemon);
//   - throughput, on a second daemon whose quotas are lifted (so the figures
//     are the daemon's work, not its limits): a repeated token (cache) and
//     distinct jobs of one project, next to a trivial HTTP handler on the
//     same kind of socket with the same client, and next to raw RS256
//     verifies in this process, with the ratios;
//   - mint latency: 10,000 distinct-job mints, p50/p99/max and the slowest
//     and fastest second;
//   - the daemon's resident memory (VmRSS and VmHWM of the exchanged
//     process, from /proc/PID/status) with 100,000 ledger rows (seeded into
//     its database before it starts) and the 10,000+ live credentials it
//     minted and caches.
//
// With -pprof DIR, exchanged is built with -tags gltoken_pprof and the
// quota-lifted daemon's profiles are written into DIR: mint-cpu.pprof,
// mint-block.pprof and mint-mutex.pprof over the mint-latency phase, and
// heap.pprof (after a GC) when its memory is read.
//
// It then times `git credential fill` through git-credential-gltoken next to
// a static helper. It prints its figures; it asserts nothing. `make bench`
// runs it.
package main

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"database/sql"
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
	"gltoken.dev/gltoken/internal/sqlite"
	"gltoken.dev/gltoken/internal/syncbuf"
)

const audience = "https://gltoken.example.com"

func main() {
	requests := flag.Int("requests", 3000, "requests per throughput phase (at most)")
	duration := flag.Duration("duration", 5*time.Second, "time per throughput phase (at most)")
	workers := flag.Int("c", 8, "concurrent clients in the throughput phases")
	mints := flag.Int("mints", 10_000, "distinct-job mints in the mint-latency phase")
	rows := flag.Int("rows", 100_000, "ledger rows seeded before the memory figure")
	fills := flag.Int("fills", 40, "git credential fill runs per helper")
	profDir := flag.String("pprof", "", "write the quota-lifted daemon's profiles into this directory (builds exchanged with -tags gltoken_pprof)")
	flag.Parse()
	if err := run(*requests, *duration, *workers, *mints, *rows, *fills, *profDir); err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(1)
	}
}

const policyYAML = `rules:
  - name: app-reads
    match: {project_path: platform/app}
    allow: {projects: [platform/lib1, platform/lib2, platform/lib3, platform/lib4, platform/lib5, platform/read-target], scopes: [read_repository], ttl: 1h}
  - name: app-pushes
    match: {project_path: platform/app}
    allow: {projects: [platform/push-target], scopes: [write_repository], ttl: 1h, access_level: developer}
`

type daemon struct {
	cmd  *exec.Cmd
	logs *syncbuf.Buffer // the daemon's output, written by exec's copier while loadgen reads it
	sock string
	hc   *http.Client
	prof *http.Client // the profiling socket (-pprof), or nil
}

func (d *daemon) stop() { _ = d.cmd.Process.Signal(syscall.SIGTERM); _ = d.cmd.Wait() }

// start runs exchanged with the configuration cfg (its listen, gitlab,
// audience, policy and store lines are added here) in its own directory.
// start runs exchanged in dir; extra is appended to its configuration and
// gitlabExtra to its gitlab section (", key: value" pairs).
func start(bin, dir, glURL, botToken, gitlabExtra, extra string, clients int, profile bool) (*daemon, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	sockDir, err := os.MkdirTemp("", "gl-")
	if err != nil {
		return nil, err
	}
	sock := filepath.Join(sockDir, "x.sock")
	cfg := fmt.Sprintf("listen: [\"unix://%s\"]\ngitlab: {url: %q, token_file: tok%s}\naudience: %s\npolicy_file: policy.yaml\nstore: {driver: sqlite, dsn: state.db}\nlog_level: warn\n%s",
		sock, glURL, gitlabExtra, audience, extra)
	for name, data := range map[string]string{"exchanged.yaml": cfg, "policy.yaml": policyYAML, "tok": botToken} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o600); err != nil {
			return nil, err
		}
	}
	d := &daemon{logs: &syncbuf.Buffer{}, sock: sock, hc: unixClient(sock, clients)}
	d.cmd = exec.Command(filepath.Join(bin, "exchanged"), "serve", "--config", filepath.Join(dir, "exchanged.yaml"))
	// gctrace only writes to stderr; it changes nothing the daemon does.
	d.cmd.Env = append(os.Environ(), "GODEBUG=gctrace=1")
	if profile {
		psock := filepath.Join(sockDir, "pprof.sock")
		d.cmd.Env = append(d.cmd.Env, "GLTOKEN_PPROF_SOCKET="+psock)
		d.prof = unixClient(psock, 1)
	}
	d.cmd.Stdout, d.cmd.Stderr = d.logs, d.logs
	if err := d.cmd.Start(); err != nil {
		return nil, err
	}
	if err := waitReady(d.hc); err != nil {
		d.stop()
		return nil, fmt.Errorf("%w\n%s", err, d.logs.String())
	}
	return d, nil
}

// profile calls route on the daemon's profiling socket and writes the answer
// to file (none: discarded); without -pprof it does nothing.
func (d *daemon) profile(method, route, file string) error {
	if d.prof == nil {
		return nil
	}
	req, err := http.NewRequest(method, "http://pprof"+route, nil)
	if err != nil {
		return err
	}
	resp, err := d.prof.Do(req)
	if err != nil {
		return fmt.Errorf("profile %s: %w", route, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		return fmt.Errorf("profile %s: %d %v %s", route, resp.StatusCode, err, b)
	}
	if file == "" {
		return nil
	}
	return os.WriteFile(file, b, 0o644)
}

func unixClient(sock string, clients int) *http.Client {
	return &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{
		MaxIdleConnsPerHost: clients * 2,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		}}}
}

func run(requests int, duration time.Duration, workers, mints, rows, fills int, profDir string) error {
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
	args := []string{"build", "-trimpath", "-o", bin + "/"}
	if profDir != "" {
		if err := os.MkdirAll(profDir, 0o755); err != nil {
			return err
		}
		args = append(args, "-tags", "gltoken_pprof")
	}
	build := exec.Command("go", append(args, "./cmd/exchanged", "./cmd/git-credential-gltoken")...)
	build.Dir, build.Stderr = strings.TrimSpace(string(root)), os.Stderr
	if err := build.Run(); err != nil {
		return err
	}

	gl, err := gitlabfake.New(gitlabfake.Options{RepoRoot: filepath.Join(dir, "repos")})
	if err != nil {
		return err
	}
	defer gl.Close()
	app := gl.AddProject("platform/app")
	for _, p := range []string{"platform/lib1", "platform/lib2", "platform/lib3", "platform/lib4", "platform/lib5", "platform/read-target", "platform/push-target"} {
		gl.AddProject(p)
	}
	bot := gl.AddUser("gltoken-bot")
	gl.AddMember(bot, "platform", 40)
	botToken := gl.CreatePersonalAccessToken(bot, "service-account", []string{"api"}, nil)
	job := func() string {
		return gl.IssueIDToken(gitlabfake.Job{Project: app, Ref: "main", RefProtected: true, Audience: []string{audience}, Timeout: time.Hour})
	}
	jobs := func(n int) []string {
		t := make([]string, n)
		for i := range t {
			t[i] = job()
		}
		return t
	}
	repo := func(p string) string { return gl.URL() + "/" + p + ".git" }

	// 1. The default configuration: nothing but what the daemon needs.
	def, err := start(bin, filepath.Join(dir, "default"), gl.URL(), botToken, "", "", 500, false)
	if err != nil {
		return err
	}
	fmt.Println("== exchanged, DEFAULT configuration (no rate_limit section), stand-in at GitLab's default API rate limit, Unix socket")
	host := jobs(100)
	var reqs []request
	for _, t := range host {
		for i := 1; i <= 5; i++ {
			reqs = append(reqs, request{t, repo(fmt.Sprintf("platform/lib%d", i)), "read_repository"})
		}
	}
	before := gl.Stats()
	r := drive(def.hc, reqs, len(reqs), time.Minute)
	r.print("runner host: 100 jobs x 5 repositories, all at once")
	fmt.Printf("    GitLab deploy-token creates %d, access-token creates %d\n", deployCreates(gl, "platform/lib"), gl.Stats().AccessTokenCreates-before.AccessTokenCreates)

	// Reuse: counts on one target. The stand-in's API limit is lifted so the
	// counts are the daemon's choices, not GitLab refusing.
	gl.SetRateLimit(1_000_000)
	reqs = reqs[:0]
	for _, t := range jobs(50) {
		reqs = append(reqs, request{t, repo("platform/read-target"), "read_repository"})
	}
	r = drive(def.hc, reqs, workers, time.Minute)
	r.print("reuse: 50 read jobs on one target")
	fmt.Printf("    GitLab deploy-token creates on the target %d (target 1)\n", deployCreates(gl, "platform/read-target"))
	reqs = reqs[:0]
	for _, t := range jobs(1000) {
		reqs = append(reqs, request{t, repo("platform/push-target"), "write_repository"})
	}
	before = gl.Stats()
	r = drive(def.hc, reqs, workers, 2*time.Minute)
	r.print("reuse: 1,000 push jobs on one target")
	after := gl.Stats()
	fmt.Printf("    GitLab access-token creates %d, rotates %d, bot users on the target %d (target <= 2)\n",
		after.AccessTokenCreates-before.AccessTokenCreates, after.AccessTokenRotates-before.AccessTokenRotates, gl.BotUsersOf("platform/push-target"))
	def.stop()

	// 2. Quotas lifted: the daemon's own speed and memory.
	liftDir := filepath.Join(dir, "lifted")
	if err := os.MkdirAll(liftDir, 0o700); err != nil {
		return err
	}
	t0 := time.Now()
	if err := seed(filepath.Join(liftDir, "state.db"), rows); err != nil {
		return fmt.Errorf("seed the ledger: %w", err)
	}
	seeded := time.Since(t0)
	// The lifted daemon's GitLab API budget is lifted too (the stand-in's
	// own limit is lifted for these phases): they measure the daemon.
	lifted, err := start(bin, liftDir, gl.URL(), botToken, ", api_budget_per_minute: 100000000",
		"rate_limit: {per_second: 1000000, burst: 1000000, mints_per_job: 1000000, mints_per_project: 100000000}\n", workers, profDir != "")
	if err != nil {
		return err
	}
	defer lifted.stop()
	fmt.Printf("== exchanged with quotas lifted, %d clients, at most %d requests or %s a phase; %d revoked ledger rows seeded first (%s)\n",
		workers, requests, duration, rows, seeded.Round(time.Millisecond))
	shared := job()
	rep := repeat(request{shared, repo("platform/lib1"), "read_repository"}, requests)
	cached := drive(lifted.hc, rep, workers, duration)
	cached.print("repeated token (cache)")
	reqs = reqs[:0]
	for _, t := range jobs(requests) {
		reqs = append(reqs, request{t, repo("platform/lib1"), "read_repository"})
	}
	distinct := drive(lifted.hc, reqs, workers, duration)
	distinct.print("distinct jobs of one project")
	trivial, err := trivialPhase(workers, requests, duration, shared, repo("platform/lib1"))
	if err != nil {
		return err
	}
	trivial.print("trivial HTTP handler, same socket kind and client")
	rs := rs256PerSecond(workers, time.Second)
	fmt.Printf("  raw RS256 verifies (2048-bit, %d goroutines, this process): %.0f/s\n", workers, rs)
	fmt.Printf("  ratios: cache/trivial %.2f, cache/RS256 %.2f, distinct/trivial %.3f, distinct/RS256 %.3f\n",
		cached.rate()/trivial.rate(), cached.rate()/rs, distinct.rate()/trivial.rate(), distinct.rate()/rs)

	reqs = reqs[:0]
	for _, t := range jobs(mints) {
		reqs = append(reqs, request{t, repo("platform/lib2"), "read_repository"})
	}
	if err := lifted.profile("POST", "/cpu/start", ""); err != nil {
		return err
	}
	gc0, cpu0, self0 := gcLines(lifted.logs), procCPU(lifted.cmd.Process.Pid), selfCPU()
	m := drive(lifted.hc, reqs, workers, 3*time.Minute)
	for route, file := range map[string]string{"/cpu/stop": "mint-cpu.pprof", "/debug/pprof/block": "mint-block.pprof", "/debug/pprof/mutex": "mint-mutex.pprof"} {
		method := "GET"
		if route == "/cpu/stop" {
			method = "POST"
		}
		if err := lifted.profile(method, route, filepath.Join(profDir, file)); err != nil {
			return err
		}
	}
	gcs, pause := gcSince(lifted.logs, gc0)
	dcpu, scpu := procCPU(lifted.cmd.Process.Pid)-cpu0, selfCPU()-self0
	m.print(fmt.Sprintf("mint latency: %d distinct-job mints", mints))
	lo, hi := m.seconds()
	fmt.Printf("    p50 %s  p99 %s  max %s; slowest whole second %d mints, fastest %d\n",
		m.pct(.50), m.pct(.99), m.pct(1), lo, hi)
	fmt.Printf("    CPU in %.1fs wall: exchanged %.1fs (%.2f ms a mint), loadgen+stand-in %.1fs, of 2 cores = %.1fs; daemon GCs %d, stop-the-world %s in all\n",
		m.wall.Seconds(), dcpu.Seconds(), dcpu.Seconds()*1000/float64(len(m.lat)), scpu.Seconds(), 2*m.wall.Seconds(), gcs, pause.Round(10*time.Microsecond))
	rss, hwm := procMem(lifted.cmd.Process.Pid)
	if err := lifted.profile("GET", "/debug/pprof/heap?gc=1", filepath.Join(profDir, "heap.pprof")); err != nil {
		return err
	}
	fmt.Printf("  daemon memory (exchanged process, /proc/%d/status) with %d ledger rows + %d live credentials: VmRSS %s, VmHWM %s (target <= 64 MiB)\n",
		lifted.cmd.Process.Pid, rows, len(m.lat)+len(distinct.lat)+1, rss, hwm)
	fmt.Printf("    of it: %s; Go heap at the last GC %s\n", procRollup(lifted.cmd.Process.Pid), lastHeap(lifted.logs))

	return fillTimes(bin, dir, gl.URL(), lifted.sock, shared, fills)
}

// gcLines counts the gctrace lines the daemon wrote so far.
func gcLines(b *syncbuf.Buffer) int { n, _ := gcSince(b, 0); return n }

// gcSince counts the gctrace lines after the first skip and sums their
// stop-the-world phases ("gc N @t s P%: A+B+C ms clock": A and C are STW).
func gcSince(b *syncbuf.Buffer, skip int) (n int, stw time.Duration) {
	for _, l := range strings.Split(b.String(), "\n") {
		if !strings.HasPrefix(l, "gc ") || !strings.Contains(l, "ms clock") {
			continue
		}
		n++
		if n <= skip {
			continue
		}
		f := strings.Fields(l)
		if len(f) < 5 {
			continue
		}
		parts := strings.Split(f[4], "+")
		if len(parts) == 3 {
			for _, p := range []string{parts[0], parts[2]} {
				var ms float64
				_, _ = fmt.Sscan(p, &ms)
				stw += time.Duration(ms * float64(time.Millisecond))
			}
		}
	}
	return n - skip, stw
}

// procCPU is the user+system CPU time of process pid.
func procCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	if len(f) < 13 {
		return 0
	}
	var u, s int64
	_, _ = fmt.Sscan(f[11], &u)
	_, _ = fmt.Sscan(f[12], &s)
	return time.Duration(u+s) * time.Second / 100 // USER_HZ is 100 on Linux
}

func selfCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func deployCreates(gl *gitlabfake.Server, prefix string) int {
	n := 0
	for _, t := range gl.Tokens() {
		if (t.Kind == gitlabfake.KindDeployProject || t.Kind == gitlabfake.KindDeployGroup) && strings.HasPrefix(t.OwnerPath, prefix) {
			n++
		}
	}
	return n
}

func repeat(r request, n int) []request {
	out := make([]request, n)
	for i := range out {
		out[i] = r
	}
	return out
}

// seed creates the daemon's database and writes rows revoked records into it
// in one transaction, as a long-running daemon's history.
func seed(path string, rows int) error {
	ctx := context.Background()
	st, err := sqlite.Open(ctx, path)
	if err != nil {
		return err
	}
	if err := st.Close(); err != nil {
		return err
	}
	db, err := sql.Open("sqlite", path)
	if err != nil {
		return err
	}
	defer db.Close()
	tx, err := db.Begin()
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback() }()
	stmt, err := tx.Prepare(`INSERT INTO ledger_records (id, state, kind, owner, owner_path, scopes, resource, rule, subject,
		project_id, pipeline_id, job_id, token_jti, gitlab_id, username, secret_sha256, created_at, expires_at,
		next_attempt_at, attempts, last_error, revoked_at) VALUES (?, 'revoked', 'project_deploy_token', 2, 'platform/lib1',
		'["read_repository"]', 'platform/lib1', 'app-reads', 'project_path:platform/app:ref_type:branch:ref:main', '1', ?, ?, ?, ?,
		?, ?, ?, ?, ?, 1, '', ?)`)
	if err != nil {
		return err
	}
	now := time.Now().Add(-24 * time.Hour).UnixMicro()
	for i := range rows {
		h := sha256.Sum256([]byte(fmt.Sprint("seed", i)))
		t := now + int64(i)*1000
		if _, err := stmt.Exec(fmt.Sprintf("seed-%08d", i), fmt.Sprint(i/10), fmt.Sprint(i), fmt.Sprintf("jti-%d", i), 1_000_000+i,
			fmt.Sprintf("gltoken-%08d", i), fmt.Sprintf("%x", h), t, t+3_600_000_000, t, t+3_600_000_000); err != nil {
			return err
		}
	}
	return tx.Commit()
}

func procMem(pid int) (rss, hwm string) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return "?", "?"
	}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		switch f[0] {
		case "VmRSS:":
			rss = kib(f[1])
		case "VmHWM:":
			hwm = kib(f[1])
		}
	}
	return rss, hwm
}

// procRollup is the anonymous and file-backed parts of a process's
// resident memory (/proc/PID/smaps_rollup).
func procRollup(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return "?"
	}
	var anon, file string
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		switch f[0] {
		case "Anonymous:":
			anon = kib(f[1])
		case "Rss:":
			file = f[1]
		}
	}
	var rss, a float64
	_, _ = fmt.Sscan(file, &rss)
	_, _ = fmt.Sscan(strings.TrimSuffix(anon, " MiB"), &a)
	return fmt.Sprintf("anonymous %s, file-backed (the binary's pages) %.1f MiB", anon, rss/1024-a)
}

// lastHeap is the live heap and the goal of the daemon's last GC, from its
// gctrace line ("… A->B->C MB, D MB goal …").
func lastHeap(b *syncbuf.Buffer) string {
	last := ""
	for _, l := range strings.Split(b.String(), "\n") {
		if strings.HasPrefix(l, "gc ") && strings.Contains(l, "MB goal") {
			last = l
		}
	}
	f := strings.Split(last, ", ")
	for i, part := range f {
		if strings.HasSuffix(part, " MB goal") && i > 0 {
			sizes := strings.Fields(f[i-1])
			if len(sizes) > 0 {
				arrow := strings.Split(sizes[0], "->")
				return fmt.Sprintf("%s MB live, %s", arrow[len(arrow)-1], part)
			}
		}
	}
	return "?"
}

func kib(s string) string {
	var n float64
	_, _ = fmt.Sscan(s, &n)
	return fmt.Sprintf("%.1f MiB", n/1024)
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

type request struct{ token, resource, scope string }

type result struct {
	lat      []time.Duration
	done     []time.Time
	statuses map[int]int
	wall     time.Duration
}

func (r *result) rate() float64 { return float64(len(r.lat)) / r.wall.Seconds() }

func (r *result) pct(p float64) time.Duration {
	if len(r.lat) == 0 {
		return 0
	}
	return r.lat[min(len(r.lat)-1, int(float64(len(r.lat))*p))].Round(10 * time.Microsecond)
}

// seconds returns the fewest and most requests completed in one whole
// second of the run (the partial last second left out).
func (r *result) seconds() (lo, hi int) {
	if len(r.done) == 0 {
		return 0, 0
	}
	first := slices.MinFunc(r.done, func(a, b time.Time) int { return a.Compare(b) })
	buckets := map[int]int{}
	last := 0
	for _, t := range r.done {
		b := int(t.Sub(first) / time.Second)
		buckets[b]++
		last = max(last, b)
	}
	if last == 0 {
		return buckets[0], buckets[0]
	}
	lo = -1
	for b := 0; b < last; b++ {
		if lo < 0 || buckets[b] < lo {
			lo = buckets[b]
		}
		hi = max(hi, buckets[b])
	}
	return lo, hi
}

func (r *result) print(name string) {
	errs := 0
	for s, n := range r.statuses {
		if s != 200 {
			errs += n
		}
	}
	fmt.Printf("  %-50s %6d requests in %6.2fs = %7.0f req/s  p50 %8s  p99 %8s  errors %d, 429s %d  statuses %v\n",
		name, len(r.lat), r.wall.Seconds(), r.rate(), r.pct(.50), r.pct(.99), errs, r.statuses[429], r.statuses)
}

// drive sends reqs from c workers, stopping after d, and measures each.
func drive(hc *http.Client, reqs []request, c int, d time.Duration) *result {
	var next atomic.Int64
	var mu sync.Mutex
	r := &result{lat: make([]time.Duration, 0, len(reqs)), done: make([]time.Time, 0, len(reqs)), statuses: map[int]int{}}
	deadline := time.Now().Add(d)
	start := time.Now()
	var wg sync.WaitGroup
	for range c {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= len(reqs) || time.Now().After(deadline) {
					return
				}
				q := reqs[i]
				form := url.Values{"grant_type": {"urn:ietf:params:oauth:grant-type:token-exchange"}, "subject_token": {q.token},
					"subject_token_type": {"urn:ietf:params:oauth:token-type:jwt"}, "resource": {q.resource}, "scope": {q.scope}}
				t0 := time.Now()
				resp, err := hc.PostForm("http://gltoken/v1/token", form)
				status := 0
				if err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					status = resp.StatusCode
				}
				end := time.Now()
				mu.Lock()
				r.lat = append(r.lat, end.Sub(t0))
				r.done = append(r.done, end)
				r.statuses[status]++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	r.wall = time.Since(start)
	slices.Sort(r.lat)
	return r
}

// trivialPhase serves a handler that reads the form and answers a fixed
// JSON body on a Unix socket in this process, and drives it like the daemon.
func trivialPhase(c, n int, d time.Duration, tok, res string) (*result, error) {
	sockDir, err := os.MkdirTemp("", "gl-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(sockDir)
	sock := filepath.Join(sockDir, "t.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		return nil, err
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = r.ParseForm()
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"access_token":"x","token_type":"Bearer","expires_in":3600}`)
	})}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()
	return drive(unixClient(sock, c), repeat(request{tok, res, "read_repository"}, n), c, d), nil
}

// rs256PerSecond verifies one RS256 signature over a JWT-sized input from c
// goroutines for d and returns verifies a second.
func rs256PerSecond(c int, d time.Duration) float64 {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return 0
	}
	h := sha256.Sum256(bytes.Repeat([]byte("x"), 900))
	sig, err := rsa.SignPKCS1v15(rand.Reader, key, crypto.SHA256, h[:])
	if err != nil {
		return 0
	}
	var n atomic.Int64
	deadline := time.Now().Add(d)
	start := time.Now()
	var wg sync.WaitGroup
	for range c {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				hh := sha256.Sum256(bytes.Repeat([]byte("x"), 900))
				if rsa.VerifyPKCS1v15(&key.PublicKey, crypto.SHA256, hh[:], sig) == nil {
					n.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	return float64(n.Load()) / time.Since(start).Seconds()
}

// fillTimes runs `git credential fill` through gltoken (the daemon answers
// from its cache) and through a static helper, and prints the medians.
func fillTimes(bin, dir, glURL, sock, idToken string, n int) error {
	u, _ := url.Parse(glURL)
	input := fmt.Sprintf("protocol=http\nhost=%s\npath=platform/lib1.git\n\n", u.Host)
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
