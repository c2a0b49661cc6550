package e2e

import (
	"encoding/base64"
	"encoding/json"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestOperatorRevokes plays an operator ending credentials with
// exchanged credentials revoke while the daemon runs on the same ledger: by
// ledger id, and every credential a job holds. Each is gone at GitLab, the
// ledger says revoked (a second revoke says so and changes nothing), the
// audit event is written, and no secret is printed.
func TestOperatorRevokes(t *testing.T) {
	w := newWorld(t)
	d := w.startDaemon(t, daemonOpts{policy: perJobPolicy}) // each job its own credential
	var secrets []string
	mint := func(idToken string) string {
		t.Helper()
		before := map[string]bool{}
		for _, tok := range w.liveMinted() {
			before[tok.Name] = true
		}
		resp, body := d.exchange(idToken, w.gl.URL()+"/platform/lib.git", "read_repository")
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("exchange: %d %s", resp.StatusCode, body)
		}
		var tr struct {
			AccessToken string `json:"access_token"`
		}
		_ = json.Unmarshal([]byte(body), &tr)
		secrets = append(secrets, tr.AccessToken)
		for _, tok := range w.liveMinted() {
			if !before[tok.Name] {
				return strings.TrimPrefix(tok.Name, "gltoken-")
			}
		}
		t.Fatalf("no new token at GitLab")
		return ""
	}
	revoke := func(args ...string) (string, string, int) {
		t.Helper()
		cmd := exec.Command(filepath.Join(binDir, "exchanged"), append([]string{"credentials", "revoke", "--config", d.cfgPath}, args...)...)
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
				t.Fatalf("a secret was printed:\n%s\n%s", stdout.String(), stderr.String())
			}
		}
		return stdout.String(), stderr.String(), code
	}
	live := func(id string) bool {
		for _, tok := range w.liveMinted() {
			if tok.Name == "gltoken-"+id {
				return true
			}
		}
		return false
	}

	byID := mint(w.job("main", true))
	jobToken := w.job("main", true)
	byJob := mint(jobToken)

	out, errOut, code := revoke("--id", byID)
	if code != 0 || !strings.HasPrefix(out, byID+" revoked ") || !strings.Contains(out, " sha256:") {
		t.Fatalf("revoke --id: exit %d\n%s\n%s", code, out, errOut)
	}
	if live(byID) || !live(byJob) {
		t.Fatalf("after revoke --id: %s live %v, %s live %v", byID, live(byID), byJob, live(byJob))
	}
	if !strings.Contains(errOut, `"outcome":"operator_revoked"`) || !strings.Contains(errOut, `"ledger_id":"`+byID+`"`) {
		t.Fatalf("no audit event for the revocation:\n%s", errOut)
	}
	if out, _, code := revoke("--id", byID); code != 0 || !strings.HasPrefix(out, byID+" revoked ") {
		t.Fatalf("second revoke --id: exit %d %s", code, out)
	}

	var claims struct {
		JobID string `json:"job_id"`
	}
	payload, err := base64.RawURLEncoding.DecodeString(strings.Split(jobToken, ".")[1])
	if err != nil || json.Unmarshal(payload, &claims) != nil || claims.JobID == "" {
		t.Fatalf("job id of the token: %v %s", err, payload)
	}
	if out, errOut, code := revoke("--job", claims.JobID); code != 0 || !strings.HasPrefix(out, byJob+" revoked ") {
		t.Fatalf("revoke --job: exit %d\n%s\n%s", code, out, errOut)
	}
	if live(byJob) {
		t.Fatal("the job's credential is still live at GitLab")
	}

	if _, errOut, code := revoke("--id", "no-such-id"); code != 1 || !strings.Contains(errOut, `no credential with ledger id "no-such-id"`) {
		t.Fatalf("unknown id: exit %d %s", code, errOut)
	}
	if _, errOut, code := revoke(); code != 2 || !strings.Contains(errOut, "exactly one of") {
		t.Fatalf("no selector: exit %d %s", code, errOut)
	}
}
