package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestReadWebhookSecret(t *testing.T) {
	if s, err := (&Config{}).ReadWebhookSecret(); s != "" || err != nil {
		t.Fatalf("without a file: %q %v, want none", s, err)
	}
	file := filepath.Join(t.TempDir(), "webhook-secret")
	c := &Config{GitLab: GitLab{WebhookSecretFile: file}}
	for _, tc := range []struct {
		name, content string
		mode          os.FileMode
		want          string // in the error; "" = accepted
	}{
		{"good", "0123456789abcdef0123\n", 0o600, ""},
		{"readable by others", "0123456789abcdef0123", 0o644, "mode 0644"},
		{"too short", "short-secret", 0o600, "at least 16"},
		{"empty", "", 0o600, "empty"},
		{"two lines", "0123456789abcdef\nmore-secret-text", 0o600, "single"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := os.WriteFile(file, []byte(tc.content), tc.mode); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(file, tc.mode); err != nil {
				t.Fatal(err)
			}
			s, err := c.ReadWebhookSecret()
			if tc.want == "" {
				if err != nil || s != strings.TrimSpace(tc.content) {
					t.Fatalf("%q %v", s, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "webhook") {
				t.Fatalf("err = %v, want one naming the webhook secret and %q", err, tc.want)
			}
			if tc.content != "" && strings.Contains(err.Error(), strings.TrimSpace(tc.content)) {
				t.Fatal("the error shows the secret")
			}
		})
	}
}

func TestJobPollInterval(t *testing.T) {
	with := func(v string) string {
		return strings.Replace(valid, "token_file: /etc/gltoken/gitlab-token}", "token_file: /etc/gltoken/gitlab-token, job_poll_interval: "+v+", webhook_secret_file: hook-secret}", 1)
	}
	c, err := Parse([]byte(valid), "exchanged.yaml")
	if err != nil || c.GitLab.JobPollInterval.D().String() != "30s" {
		t.Fatalf("default job_poll_interval: %v, %v; want 30s", c.GitLab.JobPollInterval.D(), err)
	}
	if c, err := Parse([]byte(with("60s")), "exchanged.yaml"); err != nil || c.GitLab.JobPollInterval.D().String() != "1m0s" {
		t.Fatalf("60s: %v", err)
	}
	for _, bad := range []string{"2s", "61s", "0s"} {
		_, err := Parse([]byte(with(bad)), "exchanged.yaml")
		if err == nil || !strings.Contains(err.Error(), "gitlab.job_poll_interval") {
			t.Errorf("job_poll_interval %s: err = %v", bad, err)
		}
	}
}

func TestLoadLedgerKeys(t *testing.T) {
	if k, err := (&Config{}).LoadLedgerKeys(); k != nil || err != nil {
		t.Fatalf("without a file: %v %v, want none", k, err)
	}
	file := filepath.Join(t.TempDir(), "ledger.key")
	c := &Config{Store: Store{KeyFile: file}}
	good := "k1 " + strings.Repeat("A", 43) + "=\n"
	for _, tc := range []struct {
		name, content string
		mode          os.FileMode
		want          string // in the error; "" = accepted
	}{
		{"good", good, 0o600, ""},
		{"readable by others", good, 0o644, "mode 0644"},
		{"not a key", "k1 c2hvcnQ=\n", 0o600, "line 1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := os.WriteFile(file, []byte(tc.content), tc.mode); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(file, tc.mode); err != nil {
				t.Fatal(err)
			}
			k, err := c.LoadLedgerKeys()
			if tc.want == "" {
				if err != nil || k == nil {
					t.Fatalf("%v %v", k, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "store.key_file") || !strings.Contains(err.Error(), file) {
				t.Fatalf("err = %v, want store.key_file, the path and %q", err, tc.want)
			}
		})
	}
}
