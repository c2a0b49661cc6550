package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"gltoken.dev/gltoken/internal/gitlabfake"
)

// These tests run the real exchanged: restarted on its embedded ledger, two
// replicas on one PostgreSQL, and one daemon with several service tokens.
// They count the stand-in's creates, rotations and bot users.

// replicaPolicy: reads of platform/lib shared by the project's jobs, and
// pushes to platform/deploy from the pool (reuse: project, the default).
const replicaPolicy = `
rules:
  - name: app-reads-libs
    match:
      project_path: platform/app
      ref_protected: "true"
    allow:
      projects: [platform/lib]
      scopes: [read_repository]
      ttl: 1h
  - name: app-pushes-deploy
    match:
      project_path: platform/app
      ref: main
      ref_protected: "true"
    allow:
      projects: [platform/deploy]
      scopes: [read_repository, write_repository]
      ttl: 30m
      access_level: developer
`

// grant is a token endpoint's answer.
type grant struct {
	AccessToken string `json:"access_token"`
	Username    string `json:"username"`
}

// exchangeFor posts an exchange and returns the status and the grant.
func exchangeFor(t *testing.T, d *daemon, idToken, resource, scope string) (int, grant, string) {
	t.Helper()
	form := url.Values{
		"grant_type":         {"urn:ietf:params:oauth:grant-type:token-exchange"},
		"subject_token":      {idToken},
		"subject_token_type": {"urn:ietf:params:oauth:token-type:jwt"},
		"resource":           {resource},
		"scope":              {scope},
	}
	resp, err := d.httpClient().PostForm(d.base()+"/v1/token", form)
	if err != nil {
		t.Error(err)
		return 0, grant{}, ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var g grant
	if resp.StatusCode == http.StatusOK {
		_ = json.Unmarshal(b, &g)
	}
	return resp.StatusCode, g, string(b)
}

// worksAtGit reports whether git accepts the credential for repo.
func worksAtGit(t *testing.T, w *world, user, secret, repo string) bool {
	t.Helper()
	u, _ := url.Parse(w.gl.URL())
	u.User = url.UserPassword(user, secret)
	u.Path = "/" + repo + ".git"
	cmd := exec.Command("git", "ls-remote", u.String())
	cmd.Env = append(cmd.Environ(), "GIT_TERMINAL_PROMPT=0", "GIT_ASKPASS=", "GIT_CONFIG_NOSYSTEM=1", "HOME="+t.TempDir())
	return cmd.Run() == nil
}

// TestRestartReusesSealedCredential (#10.4): with store.key_file the daemon
// seals a shared credential's secret into its ledger; killed (SIGKILL) and
// restarted, it hands the same live credential to the next job of the
// project from the ledger, and GitLab sees no second create.
func TestRestartReusesSealedCredential(t *testing.T) {
	w := newWorld(t)
	d := w.startDaemon(t, daemonOpts{policy: replicaPolicy, ledgerKey: true})
	lib := w.gl.URL() + "/platform/lib.git"
	code, first, body := exchangeFor(t, d, w.job("main", true), lib, "read_repository")
	if code != http.StatusOK {
		t.Fatalf("first job: %d %s", code, body)
	}
	if n := countCreates(w); n != 1 {
		t.Fatalf("%d deploy-token creates for the first job, want 1", n)
	}
	d.kill()
	d.start()
	// The next job of the project, through the real helper and git.
	g := w.git(t, d, w.job("main", true))
	g.mustRun("", "clone", lib)
	code, again, body := exchangeFor(t, d, w.job("main", true), lib, "read_repository")
	if code != http.StatusOK || again.AccessToken != first.AccessToken {
		t.Fatalf("after the restart: %d, same credential %v\n%s", code, again.AccessToken == first.AccessToken, body)
	}
	if n := countCreates(w); n != 1 {
		t.Fatalf("%d deploy-token creates after the restart, want still 1:\n%s", n, d.logs.String())
	}
	if n := len(w.liveMinted()); n != 1 {
		t.Fatalf("%d live credentials, want 1", n)
	}
	assertNoSecrets(t, "daemon log", d.logs.String())
}

// TestReplicasShareOnePostgres (#10.3, #10.4): two exchanged replicas on one
// PostgreSQL ledger with one ledger key. Read jobs spread over both share
// one deploy token (one create). Push jobs arriving at both at once never
// make more than two bot users and are all served: the ledger serialises
// the replicas' decisions about the pool's slots. With both slots' secrets
// revoked (the slots idle), a second wave of concurrent pushes on both
// replicas hands out both slots, each rotated by one replica, every secret
// working at git, still two bot users.
func TestReplicasShareOnePostgres(t *testing.T) {
	dsn := postgresDSN(t)
	w := newWorld(t)
	var replicas []*daemon
	for i := range 2 {
		replicas = append(replicas, w.startDaemon(t, daemonOpts{
			name: fmt.Sprintf("replica%d", i), policy: replicaPolicy, ledgerKey: true,
			store: fmt.Sprintf("{driver: postgres, dsn: %q}", dsn),
		}))
	}
	lib := w.gl.URL() + "/platform/lib.git"
	deploy := w.gl.URL() + "/platform/deploy.git"

	code, first, body := exchangeFor(t, replicas[0], w.job("main", true), lib, "read_repository")
	if code != http.StatusOK {
		t.Fatalf("first read job: %d %s", code, body)
	}
	const jobs = 40
	wave := func(resource, scope string) []grant {
		out := make([]grant, jobs)
		toks := make([]string, jobs)
		for i := range toks {
			toks[i] = w.job("main", true)
		}
		start := make(chan struct{})
		var wg sync.WaitGroup
		for i := range jobs {
			wg.Go(func() {
				<-start
				code, g, body := exchangeFor(t, replicas[i%2], toks[i], resource, scope)
				if code != http.StatusOK {
					t.Errorf("job %d on replica %d: %d %s", i, i%2, code, body)
				}
				out[i] = g
			})
		}
		close(start)
		wg.Wait()
		return out
	}
	for i, g := range wave(lib, "read_repository") {
		if g.AccessToken != first.AccessToken {
			t.Fatalf("read job %d on replica %d got another credential", i, i%2)
		}
	}
	if n := countCreates(w); n != 1 {
		t.Fatalf("%d deploy-token creates for %d read jobs on two replicas, want 1", n, jobs+1)
	}

	pushes := wave(deploy, "write_repository")
	if t.Failed() {
		t.FailNow()
	}
	st := w.gl.Stats()
	if st.BotUsers > 2 || st.AccessTokenCreates > 2 {
		t.Fatalf("stand-in %+v after %d concurrent pushes on two replicas: want at most 2 bot users", st, jobs)
	}
	secrets := map[string]grant{}
	for _, g := range pushes {
		secrets[g.AccessToken] = g
	}
	for _, g := range secrets {
		if !worksAtGit(t, w, g.Username, g.AccessToken, "platform/deploy") {
			t.Fatal("a pooled secret does not work at git")
		}
	}

	// The secrets revoked through replica 0: each slot is rotated, idle.
	for s := range secrets {
		resp, err := replicas[0].httpClient().PostForm(replicas[0].base()+"/v1/revoke", url.Values{"token": {s}})
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("revoke: %v %v", resp, err)
		}
		resp.Body.Close()
		if worksAtGit(t, w, secrets[s].Username, s, "platform/deploy") {
			t.Fatal("a revoked pooled secret still works at git")
		}
	}
	rotates := w.gl.Stats().AccessTokenRotates
	second := wave(deploy, "write_repository")
	if t.Failed() {
		t.FailNow()
	}
	st = w.gl.Stats()
	if st.BotUsers > 2 || st.AccessTokenCreates > 2 {
		t.Fatalf("stand-in %+v after the second wave: want at most 2 bot users", st)
	}
	fresh := map[string]grant{}
	for _, g := range second {
		if _, old := secrets[g.AccessToken]; old {
			t.Fatal("a job was handed a secret revoked before its wave")
		}
		fresh[g.AccessToken] = g
	}
	for _, g := range fresh {
		if !worksAtGit(t, w, g.Username, g.AccessToken, "platform/deploy") {
			t.Fatal("a secret of the second wave does not work at git")
		}
	}
	if got := st.AccessTokenRotates - rotates; got != len(fresh) {
		t.Fatalf("%d rotations for %d secrets handed out in the second wave: each hand-out rotates one idle slot once", got, len(fresh))
	}
	t.Logf("two replicas: %d read jobs, 1 create; 2×%d push jobs: %+v, %d secrets in the second wave", jobs+1, jobs, st, len(fresh))
	for _, d := range replicas {
		assertNoSecrets(t, "daemon log", d.logs.String())
	}
}

// TestServiceTokenFiles (#10.5): a daemon with gitlab.token_files sends its
// calls with both service accounts' tokens, as the stand-in counts them.
// When GitLab starts rejecting one (an administrator revoked it), jobs are
// still served with the other, the rejected token is taken out of rotation
// (gltoken_service_token_usable 0, no further call with it) and /readyz
// stays ready.
func TestServiceTokenFiles(t *testing.T) {
	w := newWorld(t)
	bot2 := w.gl.AddUser("gltoken-bot-2")
	w.gl.AddMember(bot2, "platform", gitlabfake.Owner)
	w.gl.AddMember(bot2, "other", gitlabfake.Maintainer)
	second := w.gl.CreatePersonalAccessToken(bot2, "service-account-2", []string{"api"}, nil)
	d := w.startDaemon(t, daemonOpts{policy: perJobPolicy, tokens: []string{w.botToken, second}})
	ids := [2]int64{}
	for i, name := range []string{"service-account", "service-account-2"} {
		st, ok := w.gl.TokenByName(name)
		if !ok {
			t.Fatalf("no token %s", name)
		}
		ids[i] = st.ID
	}
	perToken := func() [2]int {
		var n [2]int
		for _, r := range w.gl.Requests() {
			for i, id := range ids {
				if r.TokenID == id {
					n[i]++
				}
			}
		}
		return n
	}
	lib := w.gl.URL() + "/platform/lib.git"
	for i := range 6 {
		if code, _, body := exchangeFor(t, d, w.job("main", true), lib, "read_repository"); code != http.StatusOK {
			t.Fatalf("job %d: %d %s", i, code, body)
		}
	}
	n := perToken()
	if n[0] < 3 || n[1] < 3 {
		t.Fatalf("calls per service token %v: want both accounts used (each call goes with the one with most left)", n)
	}
	m := d.metrics(t)
	for i := range 2 {
		re := fmt.Sprintf(`(?m)^gltoken_gitlab_budget_remaining\{token="sha256:[0-9a-f]{16}",token_file="[^"]+/sa-%d"\} `, i+1)
		if !regexp.MustCompile(re).MatchString(m) {
			t.Fatalf("metrics lack the budget of sa-%d:\n%s", i+1, grepLines(m, "gltoken_gitlab_budget"))
		}
	}

	w.gl.RevokeToken(gitlabfake.KindPersonal, ids[0])
	for i := range 3 {
		if code, _, body := exchangeFor(t, d, w.job("main", true), lib, "read_repository"); code != http.StatusOK {
			t.Fatalf("job %d with the first token revoked: %d %s", i, code, body)
		}
	}
	out := regexp.MustCompile(`(?m)^gltoken_service_token_usable\{token="sha256:[0-9a-f]{16}",token_file="[^"]+/sa-1"\} 0$`)
	deadline := time.Now().Add(30 * time.Second)
	for !out.MatchString(d.metrics(t)) {
		if time.Now().After(deadline) {
			t.Fatalf("the revoked token is still in rotation:\n%s\n%s", grepLines(d.metrics(t), "gltoken_service_token"), d.logs.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	rejected := func() int {
		c := 0
		for _, r := range w.gl.Requests() {
			if r.Status == http.StatusUnauthorized {
				c++
			}
		}
		return c
	}
	before := rejected()
	for i := range 3 {
		if code, _, body := exchangeFor(t, d, w.job("main", true), lib, "read_repository"); code != http.StatusOK {
			t.Fatalf("job %d with the first token out of rotation: %d %s", i, code, body)
		}
	}
	if r := rejected(); r != before {
		t.Fatalf("%d calls still went with the token out of rotation", r-before)
	}
	resp, err := d.httpClient().Get(d.base() + "/readyz")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("/readyz with one of two tokens out of rotation: %v %v", resp, err)
	}
	resp.Body.Close()
	if !strings.Contains(d.logs.String(), "GitLab rejects the service token") {
		t.Fatal("the log does not report the rejected token")
	}
	assertNoSecrets(t, "daemon log", d.logs.String())
}
