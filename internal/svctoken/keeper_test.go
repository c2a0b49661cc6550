package svctoken_test

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"gltoken.dev/gltoken/internal/fingerprint"
	"gltoken.dev/gltoken/internal/gitlab"
	"gltoken.dev/gltoken/internal/gitlabfake"
	"gltoken.dev/gltoken/internal/ledger"
	"gltoken.dev/gltoken/internal/sqlite"
	"gltoken.dev/gltoken/internal/svctoken"
	"gltoken.dev/gltoken/internal/syncbuf"
)

type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

var t0 = time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC)

// fixture: a stand-in with a service account whose PAT expires in five days.
type fixture struct {
	gl    *gitlabfake.Server
	clock *clock
	bot   *gitlabfake.User
	token string
	dir   string
}

func newFixture(t *testing.T, expiresIn time.Duration) *fixture {
	t.Helper()
	c := &clock{now: t0}
	s := gitlabfake.Start(t, gitlabfake.Options{Now: c.Now})
	bot := s.AddUser("gltoken-bot")
	exp := t0.Add(expiresIn)
	tok := s.CreatePersonalAccessToken(bot, "gltoken", []string{"api"}, &exp)
	return &fixture{gl: s, clock: c, bot: bot, token: tok, dir: t.TempDir()}
}

// tokenFile writes the token to a new 0600 file.
func (f *fixture) tokenFile(t *testing.T, name, tok string) string {
	t.Helper()
	p := filepath.Join(f.dir, name)
	if err := os.WriteFile(p, []byte(tok+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

type events struct {
	mu   sync.Mutex
	list []string
}

func (e *events) add(ev string) { e.mu.Lock(); e.list = append(e.list, ev); e.mu.Unlock() }
func (e *events) has(ev string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, x := range e.list {
		if x == ev {
			return true
		}
	}
	return false
}

func (f *fixture) keeper(t *testing.T, file string, store ledger.RotationStore, ev *events, logs *syncbuf.Buffer) *svctoken.Keeper {
	t.Helper()
	k, err := svctoken.New(f.config(t, file, store, ev, logs))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func (f *fixture) config(t *testing.T, file string, store ledger.RotationStore, ev *events, logs *syncbuf.Buffer) svctoken.Config {
	t.Helper()
	client, err := gitlab.New(gitlab.Config{BaseURL: f.gl.URL(), Token: "unused", Now: f.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	cfg := svctoken.Config{
		File: file, GitLab: client, Store: store, Rotate: true, Now: f.clock.Now,
		Before: 7 * 24 * time.Hour, Lifetime: 30 * 24 * time.Hour, ProbeAfter: 5 * time.Minute,
	}
	if ev != nil {
		cfg.OnEvent = ev.add
	}
	if logs != nil {
		cfg.Logger = slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return cfg
}

func (f *fixture) rotateCalls() int {
	// The stand-in logs a request whose connection it dropped after the
	// client saw the drop: give the log a moment to catch up.
	deadline := time.Now().Add(2 * time.Second)
	n := f.countRotateCalls()
	for last := -1; n != last && time.Now().Before(deadline); {
		last = n
		time.Sleep(50 * time.Millisecond)
		n = f.countRotateCalls()
	}
	return n
}

func (f *fixture) countRotateCalls() int {
	n := 0
	for _, r := range f.gl.Requests() {
		if r.Method == "POST" && r.Path == "/api/v4/personal_access_tokens/self/rotate" {
			n++
		}
	}
	return n
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// active reports whether the stand-in accepts secret on the API.
func (f *fixture) active(secret string) bool {
	for _, st := range f.gl.Tokens() {
		if st.SecretSHA256 == fingerprint.Of(secret) {
			return !st.Revoked && (st.ExpiresAt == nil || f.clock.Now().Before(*st.ExpiresAt))
		}
	}
	return false
}

func TestRotatesBeforeExpiryAndPersistsFirst(t *testing.T) {
	f := newFixture(t, 20*24*time.Hour)
	file := f.tokenFile(t, "gitlab-token", f.token)
	ev := &events{}
	logs := &syncbuf.Buffer{}
	k := f.keeper(t, file, nil, ev, logs)
	ctx := t.Context()
	k.Start(ctx)
	wantExp := time.Date(2026, 3, 30, 0, 0, 0, 0, time.UTC)
	if !k.ExpiresAt().Equal(wantExp) {
		t.Fatalf("expiry learnt: %v, want %v", k.ExpiresAt(), wantExp)
	}
	// 20 days left, lead time 7 days: nothing to do.
	k.Tick(ctx)
	if n := f.rotateCalls(); n != 0 {
		t.Fatalf("rotated %d times with 20 days left", n)
	}
	// 6 days and 12 hours left: rotate.
	f.clock.Add(13*24*time.Hour + 12*time.Hour)
	k.Tick(ctx)
	if n := f.rotateCalls(); n != 1 {
		t.Fatalf("rotate calls: %d, want 1", n)
	}
	next := k.Token()
	if next == f.token || !strings.HasPrefix(next, "glpat-") {
		t.Fatal("the token in force did not change")
	}
	if got := readFile(t, file); got != next {
		t.Fatal("the token file does not hold the token in force")
	}
	fi, err := os.Stat(file)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("token file mode after rotation: %v %v", fi.Mode(), err)
	}
	if left, _ := filepath.Glob(filepath.Join(f.dir, ".gitlab-token.new-*")); len(left) != 0 {
		t.Fatalf("temporary files left: %v", left)
	}
	if f.active(f.token) || !f.active(next) {
		t.Fatal("GitLab: the old token must be revoked and the new one active")
	}
	// The successor carries the explicit expires_at: rotation time + 30 days.
	if want := time.Date(2026, 4, 23, 0, 0, 0, 0, time.UTC); !k.ExpiresAt().Equal(want) {
		t.Fatalf("successor expiry %v, want %v", k.ExpiresAt(), want)
	}
	if !ev.has(svctoken.EventRotated) || k.Alerting() {
		t.Fatalf("events %v, alerting %v", ev.list, k.Alerting())
	}
	// Nothing more to do until the successor is near its end.
	k.Tick(ctx)
	if n := f.rotateCalls(); n != 1 {
		t.Fatalf("rotate calls after a second tick: %d", n)
	}
	// The client built on the Keeper uses the new token.
	c, err := gitlab.New(gitlab.Config{BaseURL: f.gl.URL(), TokenSource: k.Token})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.SelfToken(ctx, k.Token()); err != nil {
		t.Fatalf("new token: %v", err)
	}
	if strings.Contains(logs.String(), f.token) || strings.Contains(logs.String(), next) {
		t.Fatal("a token secret reached the log")
	}
}

// A lost answer is an alert: the Keeper never rotates again blindly (that
// would present a revoked token to the rotate path and revoke the whole
// family), checks the old token after ProbeAfter, and an operator's new
// token plus SIGHUP (Reload) recovers.
func TestLostAnswerIsAnAlertNotALockOut(t *testing.T) {
	f := newFixture(t, 3*24*time.Hour)
	file := f.tokenFile(t, "gitlab-token", f.token)
	ev := &events{}
	logs := &syncbuf.Buffer{}
	k := f.keeper(t, file, nil, ev, logs)
	ctx := t.Context()
	f.gl.InjectFault(gitlabfake.Fault{Method: "POST", PathPrefix: "/api/v4/personal_access_tokens/self/rotate", LoseResponse: true, Times: 1})
	k.Start(ctx) // 3 days left: due at once
	if !ev.has(svctoken.EventLost) || !k.Alerting() {
		t.Fatalf("a lost answer raised no alert: events %v", ev.list)
	}
	if !strings.Contains(logs.String(), "ALERT") || !strings.Contains(logs.String(), "recovery") {
		t.Fatalf("the log does not say what happened and where the recovery steps are:\n%s", logs.String())
	}
	if k.Token() != f.token || readFile(t, file) != f.token {
		t.Fatal("the token in force or the file changed without an answer")
	}
	// The lost successor exists at GitLab (the rotate happened).
	var successor gitlabfake.TokenState
	for _, st := range f.gl.Tokens() {
		if st.UserID == f.bot.ID && !st.Revoked {
			successor = st
		}
	}
	if successor.ID == 0 {
		t.Fatal("the stand-in did not rotate")
	}
	// Ticks before ProbeAfter: no call to the rotate path at all.
	for range 3 {
		f.clock.Add(time.Minute)
		k.Tick(ctx)
	}
	if n := f.rotateCalls(); n != 1 {
		t.Fatalf("rotate calls after a lost answer: %d, want 1 (never retried blindly)", n)
	}
	// After ProbeAfter: GitLab rejects the old token, so the successor is lost.
	f.clock.Add(5 * time.Minute)
	k.Tick(ctx)
	if !ev.has(svctoken.EventRevoked) || !k.Alerting() {
		t.Fatalf("after the probe: events %v alerting %v", ev.list, k.Alerting())
	}
	if n := f.rotateCalls(); n != 1 {
		t.Fatalf("rotate calls after the probe: %d, want 1", n)
	}
	// Reuse detection was never triggered: the lost successor is still active.
	for _, st := range f.gl.Tokens() {
		if st.ID == successor.ID && st.Revoked {
			t.Fatal("the family was revoked: a revoked token reached the rotate path")
		}
	}
	// Recovery: an operator installs a new token and sends SIGHUP.
	exp := f.clock.Now().Add(60 * 24 * time.Hour)
	fresh := f.gl.CreatePersonalAccessToken(f.bot, "gltoken", []string{"api"}, &exp)
	f.tokenFile(t, "gitlab-token", fresh)
	if err := k.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	if k.Alerting() || k.Token() != fresh {
		t.Fatal("Reload with a new token did not recover")
	}
}

// When the answer is lost but the rotation never happened (a proxy's 502
// before GitLab), the probe finds the old token active and the rotation is
// tried again: verified, not blind.
func TestLostAnswerWithoutRotationIsRetriedAfterTheProbe(t *testing.T) {
	f := newFixture(t, 3*24*time.Hour)
	file := f.tokenFile(t, "gitlab-token", f.token)
	ev := &events{}
	k := f.keeper(t, file, nil, ev, nil)
	ctx := t.Context()
	f.gl.InjectFault(gitlabfake.Fault{Method: "POST", PathPrefix: "/api/v4/personal_access_tokens/self/rotate", Status: 502, Times: 1})
	k.Start(ctx)
	if !ev.has(svctoken.EventLost) || k.Token() != f.token {
		t.Fatalf("events %v", ev.list)
	}
	f.clock.Add(time.Minute)
	k.Tick(ctx)
	if n := f.rotateCalls(); n != 1 {
		t.Fatalf("rotate calls before the probe: %d", n)
	}
	f.clock.Add(5 * time.Minute)
	k.Tick(ctx) // probe: old token active -> not rotated, alert cleared
	if !ev.has(svctoken.EventNotRotated) || k.Alerting() {
		t.Fatalf("after the probe: events %v alerting %v", ev.list, k.Alerting())
	}
	k.Tick(ctx)
	if n := f.rotateCalls(); n != 2 || k.Token() == f.token || readFile(t, file) != k.Token() {
		t.Fatalf("second rotation: calls %d", n)
	}
}

func TestRefusesTokenFileOthersCanRead(t *testing.T) {
	f := newFixture(t, 3*24*time.Hour)
	file := f.tokenFile(t, "gitlab-token", f.token)
	if err := os.Chmod(file, 0o640); err != nil {
		t.Fatal(err)
	}
	_, err := svctoken.New(f.config(t, file, nil, nil, nil))
	if err == nil || !strings.Contains(err.Error(), file) || !strings.Contains(err.Error(), "0640") {
		t.Fatalf("New with mode 0640: %v", err)
	}
	if strings.Contains(err.Error(), f.token) {
		t.Fatal("the error quotes the token")
	}
	if err := os.Chmod(file, 0o600); err != nil {
		t.Fatal(err)
	}
	k := f.keeper(t, file, nil, nil, nil)
	// On reload (SIGHUP) the same check; the token in force stays.
	f.tokenFile(t, "gitlab-token", "glpat-other")
	if err := os.Chmod(file, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := k.Reload(t.Context()); err == nil || !strings.Contains(err.Error(), "0644") {
		t.Fatalf("Reload with mode 0644: %v", err)
	}
	if k.Token() != f.token {
		t.Fatal("a refused reload changed the token in force")
	}
}

// Two replicas on one store: exactly one rotates, the other takes the
// successor up from the store and writes it to its own file.
func TestTwoReplicasRotateOnce(t *testing.T) {
	f := newFixture(t, 3*24*time.Hour)
	store, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	testTwoReplicasRotateOnce(t, f, store, store)
}

func testTwoReplicasRotateOnce(t *testing.T, f *fixture, a, b ledger.RotationStore) {
	ctx := t.Context()
	fileA := f.tokenFile(t, "token-a", f.token)
	fileB := f.tokenFile(t, "token-b", f.token)
	evA, evB := &events{}, &events{}
	ka := f.keeper(t, fileA, a, evA, nil)
	kb := f.keeper(t, fileB, b, evB, nil)
	// Both start with a token 3 days from expiry: both find the rotation due.
	var wg sync.WaitGroup
	wg.Go(func() { ka.Start(ctx) })
	wg.Go(func() { kb.Start(ctx) })
	wg.Wait()
	if n := f.rotateCalls(); n != 1 {
		t.Fatalf("rotate calls: %d, want exactly 1", n)
	}
	ka.Tick(ctx)
	kb.Tick(ctx)
	if ka.Token() != kb.Token() || ka.Token() == f.token {
		t.Fatal("the replicas do not share the successor")
	}
	if readFile(t, fileA) != ka.Token() || readFile(t, fileB) != kb.Token() {
		t.Fatal("a replica's file does not hold its token in force")
	}
	if !f.active(ka.Token()) || f.active(f.token) {
		t.Fatal("GitLab: the successor must be active and the old token revoked")
	}
	rotated, adopted := evA, evB
	if evB.has(svctoken.EventRotated) {
		rotated, adopted = evB, evA
	}
	if !rotated.has(svctoken.EventRotated) || !adopted.has(svctoken.EventAdopted) || adopted.has(svctoken.EventRotated) {
		t.Fatalf("events: a %v, b %v", evA.list, evB.list)
	}
	// A third replica starting later with the old file catches up at Start.
	fileC := f.tokenFile(t, "token-c", f.token)
	kc := f.keeper(t, fileC, b, nil, nil)
	kc.Start(ctx)
	if kc.Token() != ka.Token() || readFile(t, fileC) != ka.Token() || kc.Alerting() {
		t.Fatal("a late replica did not take up the successor")
	}
	if n := f.rotateCalls(); n != 1 {
		t.Fatalf("rotate calls: %d, want 1", n)
	}
}

// TestCheckNowFindsARevokedToken: after GitLab answered a call 401 the
// daemon asks its keeper to check the token (Recheck, run as CheckNow): a
// token revoked meanwhile becomes the keeper's Problem (out of rotation)
// and raises the alert; checks come at most every RecheckEvery, and a new
// token installed and reloaded clears it.
func TestCheckNowFindsARevokedToken(t *testing.T) {
	f := newFixture(t, 30*24*time.Hour)
	file := f.tokenFile(t, "token", f.token)
	ev := &events{}
	k := f.keeper(t, file, nil, ev, nil)
	k.Start(t.Context())
	if p := k.Problem(); p != "" || k.Alerting() {
		t.Fatalf("a valid token: problem %q, alert %v", p, k.Alerting())
	}
	selfCalls := func() int {
		n := 0
		for _, r := range f.gl.Requests() {
			if r.Path == "/api/v4/personal_access_tokens/self" {
				n++
			}
		}
		return n
	}
	st, _ := f.gl.TokenByName("gltoken")
	f.gl.RevokeToken(gitlabfake.KindPersonal, st.ID)
	before := selfCalls()
	k.CheckNow(t.Context()) // within RecheckEvery of Start's check: not yet
	if selfCalls() != before || k.Problem() != "" {
		t.Fatalf("a check within %s of the last asked GitLab (%d calls) or found %q", svctoken.RecheckEvery, selfCalls()-before, k.Problem())
	}
	f.clock.Add(svctoken.RecheckEvery)
	k.Tick(t.Context()) // the check put off comes at the next tick
	if selfCalls() != before+1 || !strings.Contains(k.Problem(), "rejects") || !k.Alerting() || !ev.has(svctoken.EventRevoked) {
		t.Fatalf("after the check: %d calls, problem %q, alert %v, events %v", selfCalls()-before, k.Problem(), k.Alerting(), ev.list)
	}
	// The operator installs a new token and reloads.
	next := f.gl.CreatePersonalAccessToken(f.bot, "gltoken-2", []string{"api"}, nil)
	if err := os.WriteFile(file, []byte(next+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := k.Reload(t.Context()); err != nil {
		t.Fatal(err)
	}
	if p := k.Problem(); p != "" || k.Alerting() {
		t.Fatalf("after a new token: problem %q, alert %v", p, k.Alerting())
	}
}
