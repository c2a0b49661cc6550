package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestLoadShippedExample loads contrib/exchanged.yaml, the file users copy.
func TestLoadShippedExample(t *testing.T) {
	t.Setenv("CREDENTIALS_DIRECTORY", "")
	if _, err := Load("../../contrib/exchanged.yaml"); err == nil || !strings.Contains(err.Error(), "$CREDENTIALS_DIRECTORY is not set") {
		t.Fatalf("Load outside systemd: %v, want $CREDENTIALS_DIRECTORY named", err)
	}
	t.Setenv("CREDENTIALS_DIRECTORY", "/run/credentials/exchanged.service")
	c, err := Load("../../contrib/exchanged.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if c.GitLab.InitialTokenFile != "/run/credentials/exchanged.service/gitlab-token" || c.GitLab.TokenFile != "/var/lib/gltoken/gitlab-token" {
		t.Fatalf("token files: initial %q, token %q", c.GitLab.InitialTokenFile, c.GitLab.TokenFile)
	}
	if c.GitLab.URL != "https://gitlab.example.com" || c.Audience != "https://gltoken.example.com" ||
		c.Store.Driver != "sqlite" || c.MaxTTL.D() != 12*time.Hour || c.ReaperInterval.D() != 10*time.Second {
		t.Fatalf("unexpected config: %+v", c)
	}
	if want, _ := filepath.Abs("../../contrib/policy.yaml"); c.PolicyFile != want {
		t.Fatalf("policy_file = %s, want %s (relative to the config file)", c.PolicyFile, want)
	}
	if len(c.IDToken.Algorithms) != 1 || c.IDToken.Algorithms[0] != "RS256" {
		t.Fatalf("algorithms = %v", c.IDToken.Algorithms)
	}
}

const valid = `
listen: [unix:///run/gltoken/exchanged.sock]
gitlab: {url: https://gitlab.example.com, token_file: /etc/gltoken/gitlab-token}
audience: https://gltoken.example.com
policy_file: /etc/gltoken/policy.yaml
`

func withRotation(r string) string {
	return strings.Replace(valid, "token_file: /etc/gltoken/gitlab-token}", "token_file: /etc/gltoken/gitlab-token, rotation: "+r+"}", 1)
}

func TestValidation(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want []string // each must appear in the error
	}{
		{"minimal", valid, nil},
		{"unknown key", valid + "lisen: []\n", []string{"lisen"}},
		{"everything missing", "max_ttl: 1h\n", []string{"gitlab.url is required", "gitlab.token_file is required", "audience is required", "policy_file is required"}},
		{"plain tcp off loopback", valid + "listen: [tcp://0.0.0.0:8638]\n", nil}, // replaced below
		{"none algorithm", valid + "id_token: {algorithms: [none, HS256]}\n", []string{`"none" is not allowed`, `"HS256" is not allowed`}},
		{"leeway too long", valid + "id_token: {leeway: 5m}\n", []string{"at most 60s"}},
		{"bad duration", valid + "max_ttl: forever\n", []string{"not a duration"}},
		{"ttl too long", valid + "max_ttl: 2400h\n", []string{"max_ttl"}},
		{"http gitlab", strings.Replace(valid, "https://gitlab.example.com", "http://gitlab.example.com", 1), []string{"plain http"}},
		{"trailing slash", strings.Replace(valid, "url: https://gitlab.example.com", "url: https://gitlab.example.com/", 1), []string{"trailing slash"}},
		{"bad driver", valid + "store: {driver: mysql}\n", []string{"use sqlite or postgres"}},
		{"postgres without dsn", valid + "store: {driver: postgres}\n", []string{"store.dsn is required"}},
		{"bad listen", strings.Replace(valid, "unix:///run/gltoken/exchanged.sock", "http://x", 1), []string{"use unix:///path"}},
		{"rotation lifetime under the lead time", withRotation("{before: 720h, lifetime: 720h}"), []string{"must exceed gitlab.rotation.before"}},
		{"rotation lifetime over GitLab's maximum", withRotation("{lifetime: 9000h}"), []string{"at most 365 days"}},
		{"rotation probe too soon", withRotation("{probe_after: 10s}"), []string{"probe_after"}},
		{"rotation off ignores its tuning", withRotation("{enabled: false, lifetime: 9000h}"), nil},
		// Issue 9.6: a name starting with "127." is not loopback.
		{"http gitlab named like loopback", strings.Replace(valid, "https://gitlab.example.com", "http://127.attacker.example", 1), []string{"plain http"}},
		{"http gitlab on loopback", strings.Replace(valid, "https://gitlab.example.com", "http://127.0.0.1:8080", 1), nil},
	}
	tests[3].yaml = strings.Replace(valid, "listen: [unix:///run/gltoken/exchanged.sock]", "listen: [tcp://0.0.0.0:8638]", 1)
	tests[3].want = []string{"tls.cert_file and tls.key_file are required"}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.yaml), "exchanged.yaml")
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			var ce *Error
			if !errors.As(err, &ce) {
				t.Fatalf("err = %v, want *config.Error", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not mention %q:\n%v", w, err)
				}
			}
			for _, line := range strings.Split(err.Error(), "\n") {
				if !strings.HasPrefix(line, "exchanged.yaml:") {
					t.Errorf("line does not name the file: %q", line)
				}
			}
		})
	}
}

// TestProblemsInTheUsersWords: every problem at once, with its line and key
// path, no Go type names, a suggestion for a misspelt key.
func TestProblemsInTheUsersWords(t *testing.T) {
	cfg := `listen: [unix:///run/gltoken/exchanged.sock]
gitlab:
  url: https://gitlab.example.com
  token_file: /etc/gltoken/gitlab-token
  registy_url: https://registry.example.com
audeince: https://gltoken.example.com
policy_file: /etc/gltoken/policy.yaml
max_ttl: 100d
reaper_interval: 0s
rate_limit:
  per_second: fast
  burst: 0
id_token:
  algorithms: RS256
log_level: ""
`
	_, err := Parse([]byte(cfg), "exchanged.yaml")
	if err == nil {
		t.Fatal("accepted")
	}
	got := err.Error()
	for _, want := range []string{
		`exchanged.yaml:5: unknown key "registy_url" in gitlab (did you mean "registry_url"?)`,
		`exchanged.yaml:6: unknown key "audeince" (did you mean "audience"?)`,
		`exchanged.yaml:8: max_ttl: "100d" is not a duration: the units are s, m and h; for 100 days write 2400h`,
		`exchanged.yaml:9: reaper_interval: empty; remove the key to use the default (10s)`,
		`exchanged.yaml:11: rate_limit.per_second: a number is expected, not "fast"`,
		`exchanged.yaml:12: rate_limit.burst: empty; remove the key to use the default (100)`,
		`exchanged.yaml:14: id_token.algorithms: a list is expected, not "RS256"`,
		`exchanged.yaml:15: log_level: empty; remove the key to use the default (info)`,
		`exchanged.yaml: audience is required`,
	} {
		if !strings.Contains(got, want) {
			t.Errorf("missing %q in:\n%s", want, got)
		}
	}
	for _, goName := range []string{"config.", "unmarshal", "float64", "[]string", "!!str"} {
		if strings.Contains(got, goName) {
			t.Errorf("the error speaks Go (%q):\n%s", goName, got)
		}
	}
	if _, err := Parse([]byte(valid+"max_ttl: 12h\nmax_ttl: 1h\n"), "x.yaml"); err == nil || !strings.Contains(err.Error(), "written twice") {
		t.Errorf("a key written twice: %v", err)
	}
	if _, err := Parse([]byte("listen: [\n"), "x.yaml"); err == nil || !strings.Contains(err.Error(), "not valid YAML") {
		t.Errorf("bad YAML: %v", err)
	}
}

func TestReadToken(t *testing.T) {
	dir := t.TempDir()
	c := &Config{GitLab: GitLab{TokenFile: filepath.Join(dir, "tok")}}
	write := func(content string, mode os.FileMode) {
		if err := os.WriteFile(c.GitLab.TokenFile, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(c.GitLab.TokenFile, mode); err != nil {
			t.Fatal(err)
		}
	}
	write("glpat-secretvalue\n", 0o600)
	if tok, err := c.ReadToken(); err != nil || tok != "glpat-secretvalue" {
		t.Fatalf("%q %v", tok, err)
	}
	for _, bad := range []struct {
		content string
		mode    os.FileMode
	}{{"glpat-secretvalue", 0o644}, {"", 0o600}, {"two\ntokens", 0o600}} {
		write(bad.content, bad.mode)
		_, err := c.ReadToken()
		if err == nil {
			t.Fatalf("%q mode %o accepted", bad.content, bad.mode)
		}
		if strings.Contains(err.Error(), "secretvalue") || strings.Contains(err.Error(), "tokens") {
			t.Fatalf("error echoes the file's content: %v", err)
		}
	}
}
