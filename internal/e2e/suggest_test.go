package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"gltoken.dev/gltoken/internal/fingerprint"
	"gltoken.dev/gltoken/internal/gitlabfake"
)

// TestSuggestNarrowsToUse plays an operator tightening a policy with
// exchanged suggest: jobs read platform/lib and push platform/deploy through
// the daemon and end (GitLab's job hook lets go of their credentials); the
// suggestion narrows app-reads-libs to the target and scope used, cuts both
// ttls, and flags the rules nothing used. Its output is a policy file that
// exchanged check accepts, and used as the policy it grants what the jobs
// did and denies a target they did not use. No secret is printed.
func TestSuggestNarrowsToUse(t *testing.T) { testSuggest(t, "") }

// TestSuggestPostgres: the same against a PostgreSQL ledger.
func TestSuggestPostgres(t *testing.T) {
	testSuggest(t, fmt.Sprintf("{driver: postgres, dsn: %q}", postgresDSN(t)))
}

func testSuggest(t *testing.T, store string) {
	w := newWorld(t)
	writeFile(t, filepath.Join(w.dir, "webhook-secret"), webhookSecret+"\n", 0o600)
	d := w.startDaemon(t, daemonOpts{listen: fmt.Sprintf("tcp://127.0.0.1:%d", freePort(t)), store: store,
		gitlab: "  job_poll_interval: 60s\n  webhook_secret_file: webhook-secret\n"})
	w.gl.AddWebhook(gitlabfake.Webhook{URL: d.url + "/v1/gitlab/events", Token: webhookSecret})
	var secrets []string
	exchange := func(idToken, project, scope string) {
		t.Helper()
		resp, body := d.exchange(idToken, w.gl.URL()+"/"+project+".git", scope)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("exchange %s %s: %d %s", project, scope, resp.StatusCode, body)
		}
		var tr struct {
			AccessToken string `json:"access_token"`
		}
		_ = json.Unmarshal([]byte(body), &tr)
		secrets = append(secrets, tr.AccessToken, fingerprint.Of(tr.AccessToken)[:16])
	}
	exchange(w.job("main", true, jobWith(8001)), "platform/lib", "read_repository")
	exchange(w.job("main", true, jobWith(8002)), "platform/lib", "read_repository") // handed the same credential
	exchange(w.job("main", true, jobWith(8003)), "platform/deploy", "write_repository")
	for _, job := range []int64{8001, 8002, 8003} {
		if err := w.gl.EndJob(job, "success"); err != nil {
			t.Fatal(err)
		}
	}
	w.gl.WaitHooks()
	waitLog(t, d, `"outcome":"job_ended"`)

	suggest := func(args ...string) (string, string, int) {
		t.Helper()
		cmd := exec.Command(filepath.Join(binDir, "exchanged"), append([]string{"suggest", "--config", d.cfgPath}, args...)...)
		var stdout, stderr strings.Builder
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		for _, s := range secrets {
			if s != "" && strings.Contains(stdout.String()+stderr.String(), s) {
				t.Fatalf("a secret or its fingerprint was printed:\n%s\n%s", stdout.String(), stderr.String())
			}
		}
		return stdout.String(), stderr.String(), code
	}

	out, errOut, code := suggest("--since", "1h")
	if code != 0 {
		t.Fatalf("suggest: exit %d\n%s\n%s", code, out, errOut)
	}
	_, reads, _ := strings.Cut(out, "- name: app-reads-libs-suggested\n")
	reads, _, _ = strings.Cut(reads, "\n  - name:")
	for _, want := range []string{"mode: shadow", "projects: [platform/lib]", "scopes: [read_repository]", "ttl: 5m"} {
		if !strings.Contains(reads, want) {
			t.Errorf("app-reads-libs-suggested lacks %q:\n%s", want, out)
		}
	}
	for _, want := range []string{
		"# rule app-reads-libs (enforce): 1 minted (0 abandoned), 2 handed out, 2 jobs",
		"# rule app-pushes-deploy (enforce): 1 minted",
		"- name: app-pushes-deploy-suggested",
		"# rule tools (enforce): 0 minted", "# rule short (enforce): 0 minted", "suggest: remove the rule",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("suggest output lacks %q:\n%s", want, out)
		}
	}

	// The output is a policy file exchanged check accepts.
	suggested := filepath.Join(w.dir, "suggested.yaml")
	writeFile(t, suggested, out, 0o600)
	check := exec.Command(filepath.Join(binDir, "exchanged"), "check", "--project-policy", suggested, "--config", d.cfgPath)
	if b, err := check.CombinedOutput(); err != nil {
		t.Fatalf("exchanged check of the suggestion: %v\n%s\n%s", err, b, out)
	}

	// As the policy in force (mode enforce), it grants what was used and
	// nothing the jobs did not use.
	d.stop()
	writeFile(t, filepath.Join(w.dir, "policy.yaml"), strings.ReplaceAll(out, "mode: shadow", "mode: enforce"), 0o600)
	d.start()
	exchange(w.job("main", true), "platform/lib", "read_repository")
	exchange(w.job("main", true), "platform/deploy", "write_repository")
	for _, denied := range []struct{ project, scope string }{
		{"platform/app", "read_repository"}, // app-reads-libs allowed it; nobody used it
		{"platform/lib", "read_registry"},
		{"platform/tools/cli", "read_repository"},
	} {
		if resp, body := d.exchange(w.job("main", true), w.gl.URL()+"/"+denied.project+".git", denied.scope); resp.StatusCode != http.StatusBadRequest {
			t.Errorf("%s %s under the suggested policy: %d %s", denied.project, denied.scope, resp.StatusCode, body)
		}
	}

	// JSON, as documented.
	out, errOut, code = suggest("--since", "24h", "--json")
	var rep struct {
		Credentials int `json:"credentials"`
		Rules       []struct {
			Rule       string   `json:"rule"`
			Minted     int      `json:"minted"`
			Jobs       int      `json:"jobs"`
			ScopesUsed []string `json:"scopes_used"`
			Targets    []struct {
				Path string `json:"path"`
				Kind string `json:"kind"`
			} `json:"targets"`
			Sources []struct {
				Project string `json:"project"`
			} `json:"sources"`
			Suggestion struct {
				Action string `json:"action"`
			} `json:"suggestion"`
		} `json:"rules"`
		SuggestedPolicy string `json:"suggested_policy"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &rep) != nil {
		t.Fatalf("suggest --json: exit %d\n%s\n%s", code, out, errOut)
	}
	if rep.Credentials < 2 || len(rep.Rules) == 0 || rep.SuggestedPolicy == "" {
		t.Fatalf("suggest --json: %s", out)
	}
	// The policy in force now is the suggested one: the records of before
	// name app-reads-libs, a rule it has no more.
	found := false
	for _, r := range rep.Rules {
		if r.Rule == "app-reads-libs" {
			found = true
			if r.Minted != 1 || r.Jobs != 2 || len(r.Targets) != 1 || r.Targets[0].Path != "platform/lib" || r.Targets[0].Kind != "project_deploy_token" ||
				len(r.Sources) != 1 || r.Sources[0].Project != "platform/app" || r.Suggestion.Action != "none" {
				t.Errorf("app-reads-libs in JSON: %+v", r)
			}
		}
	}
	if !found {
		t.Errorf("suggest --json has no app-reads-libs:\n%s", out)
	}

	for _, bad := range [][]string{{}, {"--since", "0"}, {"--since", "-1h"}, {"--since", "week"}, {"--since", "1h", "extra"}} {
		if _, errOut, code := suggest(bad...); code != 2 || strings.Count(strings.TrimSpace(errOut), "\n") != 0 || !strings.Contains(errOut, "exchanged suggest: ") {
			t.Errorf("suggest %v: exit %d, stderr %q", bad, code, errOut)
		}
	}
	if out, errOut, code := suggest("--since", "1ns"); code != 0 || !strings.Contains(out, "no credential was minted or handed out in the window") {
		t.Errorf("empty window: exit %d\n%s\n%s", code, out, errOut)
	}
}
