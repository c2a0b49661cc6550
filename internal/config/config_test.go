package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
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
		{"everything missing", "max_ttl: 1h\n", []string{"gitlab.url is required", "gitlab.token_file (or gitlab.token_files) is required", "audience is required", "policy_file is required"}},
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

func TestReadTokens(t *testing.T) {
	dir := t.TempDir()
	c := &Config{GitLab: GitLab{TokenFile: filepath.Join(dir, "tok")}}
	write := func(file, content string, mode os.FileMode) {
		if err := os.WriteFile(file, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(file, mode); err != nil {
			t.Fatal(err)
		}
	}
	write(c.GitLab.TokenFile, "glpat-secretvalue\n", 0o600)
	if toks, err := c.ReadTokens(); err != nil || !slices.Equal(toks, []string{"glpat-secretvalue"}) {
		t.Fatalf("%q %v", toks, err)
	}
	for _, bad := range []struct {
		content string
		mode    os.FileMode
	}{{"glpat-secretvalue", 0o644}, {"", 0o600}, {"two\ntokens", 0o600}} {
		write(c.GitLab.TokenFile, bad.content, bad.mode)
		_, err := c.ReadTokens()
		if err == nil {
			t.Fatalf("%q mode %o accepted", bad.content, bad.mode)
		}
		if strings.Contains(err.Error(), "secretvalue") || strings.Contains(err.Error(), "tokens") {
			t.Fatalf("error echoes the file's content: %v", err)
		}
	}

	// Several files, in their order; one holding another's token is refused.
	sa1, sa2 := filepath.Join(dir, "sa-1"), filepath.Join(dir, "sa-2")
	c = &Config{GitLab: GitLab{TokenFiles: []string{sa1, sa2}}}
	write(sa1, "glpat-one\n", 0o600)
	write(sa2, "glpat-two\n", 0o600)
	if toks, err := c.ReadTokens(); err != nil || !slices.Equal(toks, []string{"glpat-one", "glpat-two"}) {
		t.Fatalf("%q %v", toks, err)
	}
	write(sa2, "glpat-one\n", 0o600)
	if _, err := c.ReadTokens(); err == nil || !strings.Contains(err.Error(), "same token") || strings.Contains(err.Error(), "glpat-one") {
		t.Fatalf("two files with one token: %v", err)
	}
	write(sa2, "glpat-two\n", 0o644)
	if _, err := c.ReadTokens(); err == nil || !strings.Contains(err.Error(), sa2) {
		t.Fatalf("a readable second file: %v", err)
	}
}

// TestTokenFiles: gitlab.token_files names several service tokens, each
// file once, with initial_token_files one for one; every mistake is named
// with its line.
func TestTokenFiles(t *testing.T) {
	base := `listen: [unix:///run/gltoken/exchanged.sock]
audience: https://gltoken.example.com
policy_file: /etc/gltoken/policy.yaml
gitlab:
  url: https://gitlab.example.com
`
	t.Setenv("CREDENTIALS_DIRECTORY", "/run/credentials/exchanged.service")
	c, err := Parse([]byte(base+`  token_files: [sa-1, /var/lib/gltoken/sa-2]
  initial_token_files: ["${CREDENTIALS_DIRECTORY}/sa-1", "${CREDENTIALS_DIRECTORY}/sa-2"]
`), "/etc/gltoken/exchanged.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if got := c.TokenFiles(); !slices.Equal(got, []string{"/etc/gltoken/sa-1", "/var/lib/gltoken/sa-2"}) {
		t.Errorf("TokenFiles = %q", got)
	}
	if got := c.InitialTokenFiles(); !slices.Equal(got, []string{"/run/credentials/exchanged.service/sa-1", "/run/credentials/exchanged.service/sa-2"}) {
		t.Errorf("InitialTokenFiles = %q", got)
	}
	c, err = Parse([]byte(valid), "/etc/gltoken/exchanged.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if got, seeds := c.TokenFiles(), c.InitialTokenFiles(); !slices.Equal(got, []string{"/etc/gltoken/gitlab-token"}) || !slices.Equal(seeds, []string{""}) {
		t.Errorf("token_file alone: TokenFiles = %q, InitialTokenFiles = %q", got, seeds)
	}

	for _, tc := range []struct {
		name, gitlab string
		want         []string
	}{
		{"both forms", "  token_file: /a\n  token_files: [/b]\n",
			[]string{"exchanged.yaml:7: gitlab.token_files: use it or gitlab.token_file, not both"}},
		{"empty list", "  token_files: []\n",
			[]string{"exchanged.yaml:6: gitlab.token_files: empty; list the service-account token files"}},
		{"listed twice", "  token_files:\n    - /a\n    - /b\n    - /a\n",
			[]string{`exchanged.yaml:9: gitlab.token_files[2]: "/a" is listed twice (also gitlab.token_files[0], line 7)`}},
		{"an empty entry", "  token_files: [/a, \"\"]\n",
			[]string{"exchanged.yaml:6: gitlab.token_files[1]: empty"}},
		{"not a list", "  token_files: /a\n",
			[]string{`exchanged.yaml:6: gitlab.token_files: a list is expected, not "/a"`}},
		{"initial file of one token", "  token_files: [/a]\n  initial_token_file: /seed\n",
			[]string{"exchanged.yaml:7: gitlab.initial_token_file goes with gitlab.token_file; with gitlab.token_files write gitlab.initial_token_files"}},
		{"initial files without the list", "  token_file: /a\n  initial_token_files: [/seed]\n",
			[]string{"exchanged.yaml:7: gitlab.initial_token_files goes with gitlab.token_files"}},
		{"initial files one short", "  token_files: [/a, /b]\n  initial_token_files: [/s]\n",
			[]string{"exchanged.yaml:7: gitlab.initial_token_files: 1 file(s) for 2 in gitlab.token_files"}},
		{"initial file is a token file", "  token_files: [/a, /b]\n  initial_token_files: [/s, /a]\n",
			[]string{`exchanged.yaml:7: gitlab.initial_token_files[1]: "/a" is also gitlab.token_files[0]`}},
		{"initial file without systemd", "  token_files: [/a]\n  initial_token_files: [\"${CREDENTIALS_DIRECTORY}/a\"]\n",
			[]string{"exchanged.yaml:7: gitlab.initial_token_files[0]:", "$CREDENTIALS_DIRECTORY is not set"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if strings.Contains(tc.gitlab, "CREDENTIALS_DIRECTORY") {
				t.Setenv("CREDENTIALS_DIRECTORY", "")
			}
			_, err := Parse([]byte(base+tc.gitlab), "exchanged.yaml")
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("missing %q in:\n%v", w, err)
				}
			}
		})
	}
	var ls []string
	for i := range MaxTokenFiles + 1 {
		ls = append(ls, fmt.Sprintf("/sa-%d", i))
	}
	if _, err := Parse([]byte(base+"  token_files: ["+strings.Join(ls, ", ")+"]\n"), "exchanged.yaml"); err == nil ||
		!strings.Contains(err.Error(), "exchanged.yaml:6: gitlab.token_files: 17 files; at most 16") {
		t.Errorf("17 token files: %v", err)
	}
}
