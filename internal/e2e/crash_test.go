package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"gltoken.dev/gltoken/internal/gitlabfake"
	"gltoken.dev/gltoken/internal/ledger"
	"gltoken.dev/gltoken/internal/sqlite"
)

// TestCrashLosesNothing kills exchanged with SIGKILL while mints are in
// flight, at many points, restarts it, and checks that every credential alive
// in GitLab is one the ledger will revoke, and that none outlives its TTL plus
// one reaper interval.
func TestCrashLosesNothing(t *testing.T) {
	w := newWorld(t)
	// Slow GitLab's token creation down so that kills land inside mints:
	// before the intent, between intent and create, during the create, and
	// between the create and the ledger's record of it.
	w.gl.InjectFault(gitlabfake.Fault{Method: "POST", PathPrefix: "/api/v4/projects/", Latency: 40 * time.Millisecond})
	// 100 rounds (make crash) make more than gitlab.com's 2,000 requests a
	// minute; a 429 on the JWKS would keep a restart from getting ready.
	// This test is about crashes, not rate limits.
	w.gl.SetRateLimit(1 << 30)
	d := w.startDaemon(t, daemonOpts{reaperInterval: "1s"})

	// GLTOKEN_CRASH_ROUNDS sets the number of kills (make crash: 100).
	rounds, perRound := 15, 6
	if v := os.Getenv("GLTOKEN_CRASH_ROUNDS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("GLTOKEN_CRASH_ROUNDS=%q: want a positive number", v)
		}
		rounds = n
	}
	orphans := 0
	var granted, failed atomic.Int32
	rng := rand.New(rand.NewPCG(1, 2))
	for round := range rounds {
		var wg sync.WaitGroup
		for range perRound {
			tok := w.job("short-lived", false)
			wg.Add(1)
			go func() {
				defer wg.Done()
				if postExchange(d, tok, w.gl.URL()+"/platform/lib.git") {
					granted.Add(1)
				} else {
					failed.Add(1)
				}
			}()
		}
		// Spread the kill over the whole mint: 0 to 120 ms after the requests.
		time.Sleep(time.Duration(rng.IntN(120)) * time.Millisecond)
		d.kill()
		wg.Wait()
		d.start() // reconciles the dead process's intents before it is ready
		orphans += countOrphans(t, w, d, round)
	}
	minted := 0
	for _, tok := range w.gl.Tokens() {
		if strings.HasPrefix(tok.Name, "gltoken-") {
			minted++
		}
	}
	t.Logf("%d kills; %d exchanges answered, %d cut off; %d tokens created in GitLab; orphans: %d", rounds, granted.Load(), failed.Load(), minted, orphans)
	fmt.Printf("crash test: %d kill -9 rounds, %d tokens created in GitLab, orphans: %d\n", rounds, minted, orphans)
	if minted == 0 {
		t.Fatal("no token was ever created: the test did not exercise a mint")
	}

	// Every credential is ended by its TTL (12s) plus one reaper interval (1s).
	deadline := time.Now().Add(12*time.Second + time.Second + 10*time.Second)
	for len(w.liveMinted()) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d tokens outlived their TTL: %+v", len(w.liveMinted()), w.liveMinted())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func postExchange(d *daemon, idToken, resource string) bool {
	form := url.Values{
		"grant_type":         {"urn:ietf:params:oauth:grant-type:token-exchange"},
		"subject_token":      {idToken},
		"subject_token_type": {"urn:ietf:params:oauth:token-type:jwt"},
		"resource":           {resource},
		"scope":              {"read_repository"},
	}
	resp, err := d.httpClient().PostForm(d.base()+"/v1/token", form)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// countOrphans: every token alive in GitLab is known to the ledger as Active
// (revoked at its TTL) or as a Pending intent (the reaper finds it by name and
// revokes it at its TTL, or when the mint's lease ends). Each orphan is a test
// error; it returns how many it found.
func countOrphans(t *testing.T, w *world, d *daemon, round int) int {
	t.Helper()
	ctx := context.Background()
	store, err := sqlite.Open(ctx, d.dbPath)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	n := 0
	for _, tok := range w.liveMinted() {
		id := strings.TrimPrefix(tok.Name, "gltoken-")
		rec, err := store.Get(ctx, id)
		if err != nil {
			t.Errorf("round %d: orphan: token %s (%d) alive in GitLab, ledger: %v", round, tok.Name, tok.ID, err)
			n++
			continue
		}
		if rec.State == ledger.Pending {
			continue
		}
		if rec.State != ledger.Active || rec.GitLabID != tok.ID {
			t.Errorf("round %d: orphan: token %s (%d) alive in GitLab, ledger says %s (gitlab id %d)", round, tok.Name, tok.ID, rec.State, rec.GitLabID)
			n++
		}
	}
	return n
}
