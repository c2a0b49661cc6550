// Package config loads and validates exchanged's YAML configuration. Load
// returns every problem it finds, each naming the file, the line and the key
// in the user's words, so `exchanged check` can list them all at once.
package config

import (
	"errors"
	"fmt"
	"gltoken.dev/gltoken/internal/seal"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"gltoken.dev/gltoken/internal/loopback"
	"gltoken.dev/gltoken/internal/svctoken"
)

// Config is exchanged's configuration. Relative file paths are resolved
// against the configuration file's directory.
type Config struct {
	Listen     []string `yaml:"listen"`
	TLS        TLS      `yaml:"tls"`
	GitLab     GitLab   `yaml:"gitlab"`
	Audience   string   `yaml:"audience"`
	PolicyFile string   `yaml:"policy_file"`
	Store      Store    `yaml:"store"`
	MaxTTL     Duration `yaml:"max_ttl"`

	// Extensions, all optional (docs/reference.md lists every key).
	LogLevel       string   `yaml:"log_level"`       // debug|info|warn|error (default info)
	ReaperInterval Duration `yaml:"reaper_interval"` // default 10s
	// SweepInterval: how often the owners minted on are listed for tokens
	// that escaped the ledger (one GitLab call per owner; default 15m).
	SweepInterval Duration  `yaml:"sweep_interval"`
	IDToken       IDToken   `yaml:"id_token"`
	RateLimit     RateLimit `yaml:"rate_limit"`

	File string `yaml:"-"` // where it was loaded from
}

// TLS names the PEM files for TCP listeners.
type TLS struct {
	CertFile     string `yaml:"cert_file"`
	KeyFile      string `yaml:"key_file"`
	ClientCAFile string `yaml:"client_ca_file"`
}

// GitLab is the instance the daemon serves and mints on.
type GitLab struct {
	URL string `yaml:"url"`
	// Issuer is the exact iss of ID tokens when an administrator changed
	// GitLab's ci_id_tokens.issuer_url; default URL. Keys still come only
	// from {url}/oauth/discovery/keys.
	Issuer    string `yaml:"issuer"`
	TokenFile string `yaml:"token_file"`
	// TokenFiles, instead of TokenFile, names several service-account
	// tokens, each in a file of its own (each rotated by itself). Every
	// call to GitLab goes with the token whose account has the most calls
	// left: GitLab counts its rate limit per user, so the tokens of
	// different accounts add up. Every account needs the same rights.
	TokenFiles []string `yaml:"token_files"`
	// InitialTokenFile is a read-only source of the service token, such as
	// systemd's $CREDENTIALS_DIRECTORY/gitlab-token (LoadCredential=;
	// $CREDENTIALS_DIRECTORY is expanded). Its token is copied into
	// token_file when token_file does not exist yet or the source holds a
	// token not copied before (an operator installed a new one); otherwise
	// token_file, which the daemon rotates, stays in force.
	InitialTokenFile string `yaml:"initial_token_file"`
	// InitialTokenFiles are the initial_token_file of each of TokenFiles,
	// in the same order.
	InitialTokenFiles []string `yaml:"initial_token_files"`
	RegistryURL       string   `yaml:"registry_url"`
	CAFile            string   `yaml:"ca_file"`
	// Rotation of the service token by itself before it expires.
	Rotation Rotation `yaml:"rotation"`
	// WebhookSecretFile holds the secret GitLab's webhook sends in
	// X-Gitlab-Token (mode 0600 or stricter); it enables POST /v1/gitlab/events.
	WebhookSecretFile string `yaml:"webhook_secret_file"`
	// JobPollInterval: how often the daemon asks GitLab's jobs API about
	// jobs holding live credentials that no event spoke of lately (default
	// 30s, between 5s and 60s): a job's credentials are revoked within about
	// one interval of its end, with or without the webhook.
	JobPollInterval Duration `yaml:"job_poll_interval"`
	// APIBudgetPerMinute caps the daemon's calls to GitLab's API (all of
	// them: mints, revocations, lookups, family listings, job polls, the
	// service token's checks and rotation). Default 1500, below gitlab.com's
	// 2,000 a minute; a fifth of it is reserved for revocations. When it is
	// spent, new mints are answered 429 with Retry-After while credentials
	// already cached are still served.
	APIBudgetPerMinute int `yaml:"api_budget_per_minute"`
}

// Rotation tunes the service token's self-rotation (POST
// /personal_access_tokens/self/rotate). The token file's directory must be
// writable by the daemon: the successor is written next to it and renamed over it.
type Rotation struct {
	Enabled    *bool    `yaml:"enabled"`     // default true
	Before     Duration `yaml:"before"`      // rotate this long before expiry (default 168h)
	Lifetime   Duration `yaml:"lifetime"`    // the successor's lifetime (default 720h, at most 8760h)
	ProbeAfter Duration `yaml:"probe_after"` // after a lost answer, check the old token this much later (default 5m)
}

// On reports whether rotation is enabled.
func (r Rotation) On() bool { return r.Enabled == nil || *r.Enabled }

// Store selects the ledger.
type Store struct {
	Driver string `yaml:"driver"` // sqlite (default) | postgres
	DSN    string `yaml:"dsn"`
	// KeyFile names the ledger key file ("ID BASE64" lines, mode 0600 or
	// stricter; the first key seals). With it the ledger keeps each
	// shareable credential's secret sealed (AES-256-GCM), so a restarted
	// daemon or another replica hands it out instead of minting; without
	// it secrets stay in memory only.
	KeyFile string `yaml:"key_file"`
}

// IDToken tunes verification within safe bounds.
type IDToken struct {
	Algorithms []string `yaml:"algorithms"` // default [RS256]
	Leeway     Duration `yaml:"leeway"`     // default 60s, at most 60s
}

// RateLimit sizes the daemon's limits. Before an ID token is verified only
// failures count: PerSecond and Burst are the failed requests a peer (a Unix
// socket's uid, a TCP client's IP) may make before its further failures are
// answered 429; its valid requests are never refused for them. After
// verification, mints (never cached credentials) are bounded per job, per
// source project, and per job and owner after a client revoke.
type RateLimit struct {
	PerSecond float64 `yaml:"per_second"` // failed requests per peer a second; default 10
	Burst     int     `yaml:"burst"`      // default 100
	// MintsPerJob: mints one job (its ID token's job_id) may cause a
	// minute; default 30.
	MintsPerJob int `yaml:"mints_per_job"`
	// MintsPerProject: mints all jobs of one source project (project_id)
	// may cause a minute; default 600.
	MintsPerProject int `yaml:"mints_per_project"`
	// RemintsAfterRevoke: after a client revoked a job's credential on a
	// project or group, the job may mint there again this many times per
	// 10 minutes; default 3.
	RemintsAfterRevoke int `yaml:"remints_after_revoke"`
}

// Duration is a time.Duration written as "90s", "1h".
type Duration time.Duration

// UnmarshalYAML implements yaml.Unmarshaler.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	var s string
	if n.Kind != yaml.ScalarNode || n.Decode(&s) != nil {
		return fmt.Errorf("a duration like 90s or 1h is expected, not %s", describe(n))
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("%q is not a duration: %s", s, durationHint(s))
	}
	*d = Duration(v)
	return nil
}

var daysRE = regexp.MustCompile(`^([0-9]+)d$`)

func durationHint(s string) string {
	if m := daysRE.FindStringSubmatch(s); m != nil {
		n, _ := strconv.Atoi(m[1])
		return fmt.Sprintf("the units are s, m and h; for %s days write %dh", m[1], n*24)
	}
	if _, err := strconv.ParseFloat(s, 64); err == nil {
		return fmt.Sprintf("give a unit, e.g. %ss or %sm", s, s)
	}
	return "write e.g. 90s, 15m or 12h"
}

// D returns the time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// Error lists every problem found in a configuration file.
type Error struct {
	File     string
	Problems []Problem
}

// Error prints one problem a line: `file:line: key: message`.
func (e *Error) Error() string {
	var b strings.Builder
	for i, p := range e.Problems {
		if i > 0 {
			b.WriteByte('\n')
		}
		b.WriteString(e.File)
		if p.Line > 0 {
			fmt.Fprintf(&b, ":%d", p.Line)
		}
		b.WriteString(": ")
		b.WriteString(p.Message)
	}
	return b.String()
}

const maxConfigBytes = 1 << 20

// Load reads, defaults and validates the configuration at path.
func Load(path string) (*Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxConfigBytes+1))
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	if len(data) > maxConfigBytes {
		return nil, &Error{File: path, Problems: []Problem{{Message: "file larger than 1 MiB"}}}
	}
	return Parse(data, path)
}

// Parse decodes data as the configuration found at file. It reports every
// problem at once, each with its line and key.
func Parse(data []byte, file string) (*Config, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, &Error{File: file, Problems: []Problem{syntaxProblem(err)}}
	}
	if root.Kind == 0 || len(root.Content) == 0 {
		return nil, &Error{File: file, Problems: []Problem{{Message: "empty configuration"}}}
	}
	var c Config
	d := &decoder{lines: map[string]int{}, zero: map[string]bool{}}
	d.decode(root.Content[0], reflect.ValueOf(&c).Elem(), "")
	c.File = file
	dir, err := filepath.Abs(filepath.Dir(file))
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", file, err)
	}
	c.resolvePaths(dir)
	for _, df := range defaulted {
		if d.zero[df.key] {
			d.add(d.line(df.key), "%s: empty; remove the key to use the default (%s)", df.key, df.value)
		}
	}
	c.defaults()
	c.validate(d)
	if len(d.problems) > 0 {
		sort.SliceStable(d.problems, func(i, j int) bool {
			li, lj := d.problems[i].Line, d.problems[j].Line
			return li > 0 && (lj == 0 || li < lj)
		})
		return nil, &Error{File: file, Problems: d.problems}
	}
	return &c, nil
}

var yamlLineRE = regexp.MustCompile(`^yaml: line ([0-9]+): `)

func syntaxProblem(err error) Problem {
	msg := err.Error()
	if m := yamlLineRE.FindStringSubmatch(msg); m != nil {
		n, _ := strconv.Atoi(m[1])
		return Problem{Line: n, Message: "not valid YAML: " + msg[len(m[0]):]}
	}
	return Problem{Message: "not valid YAML: " + strings.TrimPrefix(msg, "yaml: ")}
}

// defaulted are the keys whose zero value means "the default": written
// empty or zero, they are refused rather than silently replaced.
var defaulted = []struct{ key, value string }{
	{"listen", "unix:///run/gltoken/exchanged.sock"},
	{"store.driver", "sqlite"},
	{"store.dsn", "/var/lib/gltoken/state.db for sqlite"},
	{"gitlab.issuer", "gitlab.url"},
	{"max_ttl", "12h"},
	{"log_level", "info"},
	{"reaper_interval", "10s"},
	{"sweep_interval", "15m"},
	{"id_token.algorithms", "[RS256]"},
	{"id_token.leeway", "60s"},
	{"rate_limit.per_second", "10"},
	{"rate_limit.burst", "100"},
	{"rate_limit.mints_per_job", "30"},
	{"rate_limit.mints_per_project", "600"},
	{"rate_limit.remints_after_revoke", "3"},
	{"gitlab.rotation.before", "168h"},
	{"gitlab.rotation.lifetime", "720h"},
	{"gitlab.rotation.probe_after", "5m"},
	{"gitlab.job_poll_interval", "30s"},
}

func (c *Config) resolvePaths(dir string) {
	abs := func(p *string) {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(dir, *p)
		}
	}
	// Secrets handed over by systemd's LoadCredential= live in
	// $CREDENTIALS_DIRECTORY: the only variable expanded, in these keys.
	cred := func(p *string) {
		*p = os.Expand(*p, func(v string) string {
			if d := os.Getenv(v); v == "CREDENTIALS_DIRECTORY" && d != "" {
				return d
			}
			return "${" + v + "}" // left for validate to name
		})
	}
	cred(&c.TLS.KeyFile)
	cred(&c.TLS.CertFile)
	cred(&c.GitLab.InitialTokenFile)
	abs(&c.TLS.CertFile)
	abs(&c.TLS.KeyFile)
	abs(&c.TLS.ClientCAFile)
	abs(&c.GitLab.TokenFile)
	abs(&c.GitLab.InitialTokenFile)
	for i := range c.GitLab.TokenFiles {
		abs(&c.GitLab.TokenFiles[i])
	}
	for i := range c.GitLab.InitialTokenFiles {
		cred(&c.GitLab.InitialTokenFiles[i])
		abs(&c.GitLab.InitialTokenFiles[i])
	}
	abs(&c.GitLab.CAFile)
	abs(&c.GitLab.WebhookSecretFile)
	abs(&c.PolicyFile)
	abs(&c.Store.KeyFile)
	if c.Store.Driver == "" || c.Store.Driver == "sqlite" {
		abs(&c.Store.DSN)
	}
	for i, l := range c.Listen {
		if rest, ok := strings.CutPrefix(l, "unix://"); ok && rest != "" && !filepath.IsAbs(rest) {
			c.Listen[i] = "unix://" + filepath.Join(dir, rest)
		}
	}
}

func (c *Config) defaults() {
	if len(c.Listen) == 0 {
		c.Listen = []string{"unix:///run/gltoken/exchanged.sock"}
	}
	if c.Store.Driver == "" {
		c.Store.Driver = "sqlite"
	}
	if c.Store.Driver == "sqlite" && c.Store.DSN == "" {
		c.Store.DSN = "/var/lib/gltoken/state.db"
	}
	if c.MaxTTL == 0 {
		c.MaxTTL = Duration(12 * time.Hour)
	}
	if c.GitLab.Issuer == "" {
		c.GitLab.Issuer = c.GitLab.URL
	}
	if c.LogLevel == "" {
		c.LogLevel = "info"
	}
	if c.SweepInterval == 0 {
		c.SweepInterval = Duration(15 * time.Minute)
	}
	if c.ReaperInterval == 0 {
		c.ReaperInterval = Duration(10 * time.Second)
	}
	if len(c.IDToken.Algorithms) == 0 {
		c.IDToken.Algorithms = []string{"RS256"}
	}
	if c.IDToken.Leeway == 0 {
		c.IDToken.Leeway = Duration(60 * time.Second)
	}
	if c.RateLimit.PerSecond == 0 {
		c.RateLimit.PerSecond = 10
	}
	if c.GitLab.Rotation.Before == 0 {
		c.GitLab.Rotation.Before = Duration(7 * 24 * time.Hour)
	}
	if c.GitLab.Rotation.Lifetime == 0 {
		c.GitLab.Rotation.Lifetime = Duration(30 * 24 * time.Hour)
	}
	if c.GitLab.JobPollInterval == 0 {
		c.GitLab.JobPollInterval = Duration(30 * time.Second)
	}
	if c.GitLab.APIBudgetPerMinute == 0 {
		c.GitLab.APIBudgetPerMinute = 1500
	}
	if c.GitLab.Rotation.ProbeAfter == 0 {
		c.GitLab.Rotation.ProbeAfter = Duration(5 * time.Minute)
	}
	if c.RateLimit.Burst == 0 {
		c.RateLimit.Burst = 100
	}
	if c.RateLimit.MintsPerJob == 0 {
		c.RateLimit.MintsPerJob = 30
	}
	if c.RateLimit.MintsPerProject == 0 {
		c.RateLimit.MintsPerProject = 600
	}
	if c.RateLimit.RemintsAfterRevoke == 0 {
		c.RateLimit.RemintsAfterRevoke = 3
	}
}

// asymmetric are the JWS algorithms an ID token may use; never none or HMAC.
var asymmetric = map[string]bool{
	"RS256": true, "RS384": true, "RS512": true, "PS256": true, "PS384": true, "PS512": true,
	"ES256": true, "ES384": true, "ES512": true, "EdDSA": true,
}

func (c *Config) validate(d *decoder) {
	add := func(key, format string, args ...any) { d.add(d.line(key), format, args...) }

	hasTCP := false
	for i, l := range c.Listen {
		u, err := url.Parse(l)
		switch {
		case l == "systemd:":
			// socket activation: the .socket unit names the addresses, TCP
			// ones among them (TLS then applies to those)
			hasTCP = true
		case err != nil:
			add(fmt.Sprintf("listen[%d]", i), "listen: %q is not a URL", l)
		case u.Scheme == "unix":
			if u.Path == "" || u.Host != "" {
				add(fmt.Sprintf("listen[%d]", i), "listen: %q: write unix:///absolute/path.sock", l)
			}
		case u.Scheme == "tcp":
			hasTCP = true
			if u.Port() == "" {
				add(fmt.Sprintf("listen[%d]", i), "listen: %q: a port is required (tcp://host:port)", l)
			}
			if !loopback.Host(u.Hostname()) && (c.TLS.CertFile == "" || c.TLS.KeyFile == "") {
				add(fmt.Sprintf("listen[%d]", i), "listen: %q is not loopback, so tls.cert_file and tls.key_file are required", l)
			}
		default:
			add(fmt.Sprintf("listen[%d]", i), "listen: %q: use unix:///path, tcp://host:port or systemd:", l)
		}
	}
	if (c.TLS.CertFile == "") != (c.TLS.KeyFile == "") {
		add("tls", "tls: cert_file and key_file go together")
	}
	if c.TLS.ClientCAFile != "" && c.TLS.CertFile == "" {
		add("tls.client_ca_file", "tls.client_ca_file needs tls.cert_file and tls.key_file")
	}
	if c.TLS.CertFile != "" && !hasTCP {
		add("tls", "tls is set but no tcp:// listen address uses it")
	}

	if c.GitLab.URL == "" {
		add("gitlab.url", "gitlab.url is required (e.g. https://gitlab.example.com)")
	} else if u, err := url.Parse(c.GitLab.URL); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.RawQuery != "" || u.User != nil {
		add("gitlab.url", "gitlab.url: %q is not an http(s) URL", c.GitLab.URL)
	} else if u.Scheme == "http" && !loopback.Host(u.Hostname()) {
		add("gitlab.url", "gitlab.url: %q: plain http is allowed only for a loopback GitLab (tests); use https", c.GitLab.URL)
	} else if strings.HasSuffix(c.GitLab.URL, "/") {
		add("gitlab.url", "gitlab.url: %q: drop the trailing slash (it must equal the ID tokens' iss exactly)", c.GitLab.URL)
	}
	c.validateTokenFiles(d)
	credKeys := []struct{ key, val string }{{"gitlab.initial_token_file", c.GitLab.InitialTokenFile}, {"tls.key_file", c.TLS.KeyFile}, {"tls.cert_file", c.TLS.CertFile}}
	for i, f := range c.GitLab.InitialTokenFiles {
		credKeys = append(credKeys, struct{ key, val string }{fmt.Sprintf("gitlab.initial_token_files[%d]", i), f})
	}
	for _, k := range credKeys {
		if strings.Contains(k.val, "${CREDENTIALS_DIRECTORY}") {
			add(k.key, "%s: %q: $CREDENTIALS_DIRECTORY is not set; systemd sets it for a unit with LoadCredential= (contrib/systemd/exchanged.service): run under it, or name the file itself", k.key, k.val)
		} else if strings.Contains(k.val, "${") {
			add(k.key, "%s: %q: only $CREDENTIALS_DIRECTORY is expanded", k.key, k.val)
		}
	}
	if f := c.GitLab.InitialTokenFile; f != "" && f == c.GitLab.TokenFile {
		add("gitlab.initial_token_file", "gitlab.initial_token_file must differ from gitlab.token_file (it is the read-only source the token file is filled from)")
	}
	if d := c.GitLab.JobPollInterval.D(); d < 5*time.Second || d > time.Minute {
		add("gitlab.job_poll_interval", "gitlab.job_poll_interval: %s: must be between 5s and 60s (a job's credentials are revoked within about one interval of its end)", d)
	}
	if c.GitLab.APIBudgetPerMinute < 0 {
		add("gitlab.api_budget_per_minute", "gitlab.api_budget_per_minute: %d: must be positive (default 1500, below gitlab.com's 2,000 a minute)", c.GitLab.APIBudgetPerMinute)
	}
	if c.GitLab.RegistryURL != "" {
		if u, err := url.Parse(c.GitLab.RegistryURL); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			add("gitlab.registry_url", "gitlab.registry_url: %q is not an http(s) URL", c.GitLab.RegistryURL)
		}
	}
	if c.Audience == "" {
		add("audience", "audience is required: the aud your jobs' id_tokens carry (e.g. https://gltoken.example.com)")
	}
	if c.PolicyFile == "" {
		add("policy_file", "policy_file is required")
	}
	switch c.Store.Driver {
	case "sqlite":
	case "postgres":
		if c.Store.DSN == "" {
			add("store.dsn", "store.dsn is required for the postgres driver")
		}
	default:
		add("store.driver", "store.driver: %q: use sqlite or postgres", c.Store.Driver)
	}
	if c.MaxTTL.D() < time.Minute || c.MaxTTL.D() > 90*24*time.Hour {
		add("max_ttl", "max_ttl: %s: must be between 1m and 2160h (90 days)", c.MaxTTL.D())
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		add("log_level", "log_level: %q: use debug, info, warn or error", c.LogLevel)
	}
	if c.ReaperInterval.D() < time.Second || c.ReaperInterval.D() > 10*time.Minute {
		add("reaper_interval", "reaper_interval: %s: must be between 1s and 10m", c.ReaperInterval.D())
	}
	if c.SweepInterval.D() < time.Second || c.SweepInterval.D() > 24*time.Hour {
		add("sweep_interval", "sweep_interval: %s: must be between 1s and 24h", c.SweepInterval.D())
	}
	for _, a := range c.IDToken.Algorithms {
		if !asymmetric[a] {
			add("id_token.algorithms", "id_token.algorithms: %q is not allowed (only asymmetric algorithms: RS256, PS256, ES256, EdDSA…; never none or HMAC)", a)
		}
	}
	if l := c.IDToken.Leeway.D(); l < 0 || l > 60*time.Second {
		add("id_token.leeway", "id_token.leeway: %s: at most 60s", l)
	}
	if r := c.GitLab.Rotation; r.On() {
		if r.Before.D() < time.Hour {
			add("gitlab.rotation.before", "gitlab.rotation.before: %s: at least 1h", r.Before.D())
		}
		if r.Lifetime.D() > 365*24*time.Hour {
			add("gitlab.rotation.lifetime", "gitlab.rotation.lifetime: %s: GitLab allows at most 365 days (8760h)", r.Lifetime.D())
		}
		if r.Lifetime.D() < r.Before.D()+24*time.Hour {
			add("gitlab.rotation.lifetime", "gitlab.rotation.lifetime: %s must exceed gitlab.rotation.before (%s) by at least a day, or every rotation would be due at once", r.Lifetime.D(), r.Before.D())
		}
		if r.ProbeAfter.D() < time.Minute {
			add("gitlab.rotation.probe_after", "gitlab.rotation.probe_after: %s: at least 1m (past any request still in flight)", r.ProbeAfter.D())
		}
	}
	if c.RateLimit.PerSecond < 0 || c.RateLimit.Burst < 0 || c.RateLimit.MintsPerJob < 0 || c.RateLimit.MintsPerProject < 0 || c.RateLimit.RemintsAfterRevoke < 0 {
		add("rate_limit", "rate_limit: values must be positive")
	}
}

// MaxTokenFiles bounds gitlab.token_files.
const MaxTokenFiles = 16

// validateTokenFiles checks gitlab.token_file / token_files and their
// initial_token_file(s): one of the two forms, each file named once.
func (c *Config) validateTokenFiles(d *decoder) {
	g := c.GitLab
	add := func(key, format string, args ...any) { d.add(d.line(key), format, args...) }
	_, listed := d.lines["gitlab.token_files"]
	_, seeds := d.lines["gitlab.initial_token_files"]
	switch {
	case g.TokenFile != "" && listed:
		add("gitlab.token_files", "gitlab.token_files: use it or gitlab.token_file, not both (token_files lists one or more files)")
		return
	case listed && len(g.TokenFiles) == 0:
		add("gitlab.token_files", "gitlab.token_files: empty; list the service-account token files (or use gitlab.token_file)")
		return
	case !listed && g.TokenFile == "":
		add("gitlab.token_file", "gitlab.token_file (or gitlab.token_files) is required: the service account token is never written inline")
		return
	case len(g.TokenFiles) > MaxTokenFiles:
		add("gitlab.token_files", "gitlab.token_files: %d files; at most %d", len(g.TokenFiles), MaxTokenFiles)
	}
	seen := map[string]string{}
	for i, f := range g.TokenFiles {
		key := fmt.Sprintf("gitlab.token_files[%d]", i)
		if f == "" {
			add(key, "%s: empty; name the file that holds the token", key)
			continue
		}
		if first, dup := seen[f]; dup {
			add(key, "%s: %q is listed twice (also %s, line %d): one token file is one token", key, f, first, d.line(first))
			continue
		}
		seen[f] = key
	}
	if listed && g.InitialTokenFile != "" {
		add("gitlab.initial_token_file", "gitlab.initial_token_file goes with gitlab.token_file; with gitlab.token_files write gitlab.initial_token_files (one per token file, in the same order)")
	}
	if !seeds {
		return
	}
	if !listed {
		add("gitlab.initial_token_files", "gitlab.initial_token_files goes with gitlab.token_files; with gitlab.token_file write gitlab.initial_token_file")
		return
	}
	if len(g.InitialTokenFiles) != len(g.TokenFiles) {
		add("gitlab.initial_token_files", "gitlab.initial_token_files: %d file(s) for %d in gitlab.token_files; give one for each, in the same order", len(g.InitialTokenFiles), len(g.TokenFiles))
		return
	}
	for i, f := range g.InitialTokenFiles {
		key := fmt.Sprintf("gitlab.initial_token_files[%d]", i)
		switch {
		case f == "":
			add(key, "%s: empty; name the read-only file the token is taken from", key)
		case seen[f] != "":
			add(key, "%s: %q is also %s: the initial file is the read-only source the token file is filled from", key, f, seen[f])
		}
	}
}

// TokenFiles are the service-account token files: gitlab.token_files, or
// gitlab.token_file alone.
func (c *Config) TokenFiles() []string {
	if len(c.GitLab.TokenFiles) > 0 {
		return c.GitLab.TokenFiles
	}
	return []string{c.GitLab.TokenFile}
}

// InitialTokenFiles are the initial token file of each of TokenFiles, in
// their order ("" where there is none).
func (c *Config) InitialTokenFiles() []string {
	files := c.TokenFiles()
	out := make([]string, len(files))
	switch {
	case len(c.GitLab.TokenFiles) > 0:
		copy(out, c.GitLab.InitialTokenFiles)
	default:
		out[0] = c.GitLab.InitialTokenFile
	}
	return out
}

// LoadLedgerKeys reads store.key_file (nil when none is configured) with
// seal.Load's checks: a regular file, 0600 or stricter, every line a valid
// key; errors name the file and line, never a key.
func (c *Config) LoadLedgerKeys() (*seal.Keyring, error) {
	if c.Store.KeyFile == "" {
		return nil, nil
	}
	k, err := seal.Load(c.Store.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("store.key_file: %w", err)
	}
	return k, nil
}

// ReadWebhookSecret reads the webhook's shared secret from
// gitlab.webhook_secret_file ("" when none is configured), with the checks
// of the token file: 0600 or stricter, one line, never echoed.
func (c *Config) ReadWebhookSecret() (string, error) {
	if c.GitLab.WebhookSecretFile == "" {
		return "", nil
	}
	s, err := svctoken.ReadFile(c.GitLab.WebhookSecretFile)
	if err != nil {
		return "", fmt.Errorf("gitlab.webhook_secret_file: %s", strings.Replace(err.Error(), "service token file", "webhook secret file", 1))
	}
	if len(s) < 16 {
		return "", fmt.Errorf("gitlab.webhook_secret_file %s: the secret is %d characters; use at least 16 random ones (e.g. openssl rand -hex 32)", c.GitLab.WebhookSecretFile, len(s))
	}
	return s, nil
}

// ReadTokens reads the service account tokens, one from each of
// TokenFiles (in their order). It refuses a file anyone but its owner may
// read (0600 or stricter), and two files holding the same token (two
// keepers would rotate it, and the second rotation, with a token the first
// revoked, makes GitLab revoke the whole family); it never echoes a token.
func (c *Config) ReadTokens() ([]string, error) {
	seeds := c.InitialTokenFiles()
	var out []string
	seen := map[string]string{}
	for i, file := range c.TokenFiles() {
		if seeds[i] != "" {
			if _, err := os.Stat(file); errors.Is(err, fs.ErrNotExist) {
				// Not copied yet: the daemon takes it at start-up.
				file = seeds[i]
			}
		}
		tok, err := svctoken.ReadFile(file)
		if err != nil {
			return nil, err
		}
		if first, dup := seen[tok]; dup {
			return nil, fmt.Errorf("service token files %s and %s hold the same token: give each file a token of its own", first, file)
		}
		seen[tok] = file
		out = append(out, tok)
	}
	return out, nil
}
