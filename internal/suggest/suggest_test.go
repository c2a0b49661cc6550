package suggest

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"gltoken.dev/gltoken/internal/ledger"
	"gltoken.dev/gltoken/internal/policy"
)

const testPolicy = `
rules:
  - name: reads
    match:
      project_path: "platform/*"
      ref_protected: "true"
    allow:
      projects: ["platform/**", "{{namespace_path}}/shared"]
      scopes: [read_repository, read_registry]
      ttl: 2h
  - name: pushes
    match: {project_path: platform/app}
    allow:
      groups: [platform/tools]
      scopes: [read_repository, write_repository]
      ttl: 15m
      access_level: developer
  - name: idle
    match: {project_path: platform/app}
    allow:
      projects: [platform/lib]
      scopes: [read_repository]
  - name: trial
    mode: shadow
    match: {project_path: platform/app}
    allow:
      projects: [platform/lib]
      scopes: [read_repository]
`

var t0 = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)

func load(t *testing.T, src string) *policy.Policy {
	t.Helper()
	pol, err := policy.Parse([]byte(src), "policy.yaml", policy.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return pol
}

// rec is a record of rule minted at t0+at for a job of project on target.
func rec(id, rule, project, target string, kind ledger.Kind, at time.Duration, ttl time.Duration, scopes ...string) ledger.Record {
	return ledger.Record{ID: id, State: ledger.Revoked, Kind: kind, OwnerPath: target, Scopes: scopes, Rule: rule,
		Subject: "project_path:" + project + ":ref_type:branch:ref:main", JobID: "j-" + id,
		CreatedAt: t0.Add(at), ExpiresAt: t0.Add(at + ttl), RevokedAt: t0.Add(at + ttl)}
}

func held(r ledger.Record, job string, from, released time.Duration) ledger.Holder {
	h := ledger.Holder{LedgerID: r.ID, JobID: job, HeldSince: r.CreatedAt.Add(from), TokenExpiresAt: r.ExpiresAt}
	if released > 0 {
		h.ReleasedAt = r.CreatedAt.Add(released)
	}
	return h
}

func analyse(t *testing.T, pol *policy.Policy, add func(a *Analysis)) *Report {
	t.Helper()
	a := New(pol, Options{Since: t0, Until: t0.Add(24 * time.Hour)})
	add(a)
	r, err := a.Report()
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func ruleReport(t *testing.T, r *Report, name string) RuleReport {
	t.Helper()
	for _, rr := range r.Rules {
		if rr.Rule == name {
			return rr
		}
	}
	t.Fatalf("no report for rule %s", name)
	return RuleReport{}
}

func TestNarrowsToWhatWasUsed(t *testing.T) {
	pol := load(t, testPolicy)
	r := analyse(t, pol, func(a *Analysis) {
		r1 := rec("a1", "reads", "platform/app", "platform/lib", ledger.ProjectDeployToken, time.Hour, 2*time.Hour, "read_repository")
		a.Add(r1, []ledger.Holder{held(r1, "j-a1", 0, 7*time.Minute), held(r1, "j-x", time.Minute, 12*time.Minute)})
		r2 := rec("a2", "reads", "platform/web", "platform/libs/util", ledger.ProjectDeployToken, 2*time.Hour, 2*time.Hour, "read_repository")
		a.Add(r2, []ledger.Holder{held(r2, "j-a2", 0, 3*time.Minute)})
		p1 := rec("p1", "pushes", "platform/app", "platform/tools/cli", ledger.ProjectAccessToken, 3*time.Hour, 15*time.Minute, "read_repository", "write_repository")
		a.Add(p1, []ledger.Holder{held(p1, "j-p1", 0, 20*time.Minute)}) // outlived the credential
		// Before the window: not counted.
		old := rec("o1", "idle", "platform/app", "platform/lib", ledger.ProjectDeployToken, -time.Hour, time.Hour, "read_repository")
		a.Add(old, []ledger.Holder{held(old, "j-o1", 0, time.Minute)})
	})
	if r.Credentials != 3 {
		t.Errorf("credentials %d, want 3", r.Credentials)
	}
	reads := ruleReport(t, r, "reads")
	if reads.Minted != 2 || reads.HandedOut != 3 || reads.Jobs != 3 || reads.Suggestion.Action != ActionNarrow {
		t.Fatalf("reads: %+v", reads)
	}
	if !slices.Equal(reads.ScopesUsed, []string{"read_repository"}) || !slices.Equal(reads.ScopesUnused, []string{"read_registry"}) {
		t.Errorf("reads scopes: used %v unused %v", reads.ScopesUsed, reads.ScopesUnused)
	}
	if reads.Holds.Count != 3 || reads.Holds.Released != 3 || reads.Holds.HeldToEnd != 0 || reads.Holds.MaxSeconds != 11*60 {
		t.Errorf("reads holds: %+v", reads.Holds)
	}
	for _, want := range []string{"name: reads-suggested", "mode: shadow", "project_path: [platform/app, platform/web]",
		`ref_protected: "true"`, "projects: [platform/lib, platform/libs/util]", "scopes: [read_repository]", "ttl: 15m"} {
		if !strings.Contains(reads.Suggestion.YAML, want) {
			t.Errorf("reads suggestion lacks %q:\n%s", want, reads.Suggestion.YAML)
		}
	}
	if _, body, _ := strings.Cut(reads.Suggestion.YAML, "- name:"); strings.Contains(body, "{{namespace_path}}") {
		t.Errorf("the template served nothing the plain entry did not, yet it is kept:\n%s", reads.Suggestion.YAML)
	}

	pushes := ruleReport(t, r, "pushes")
	if pushes.Suggestion.Action != ActionNarrow || pushes.Holds.HeldToEnd != 1 {
		t.Fatalf("pushes: %+v", pushes)
	}
	for _, want := range []string{"projects: [platform/tools/cli]", "scopes: [read_repository, write_repository]", "access_level: developer"} {
		if !strings.Contains(pushes.Suggestion.YAML, want) {
			t.Errorf("pushes suggestion lacks %q:\n%s", want, pushes.Suggestion.YAML)
		}
	}
	if _, body, _ := strings.Cut(pushes.Suggestion.YAML, "- name:"); !strings.Contains(body, "ttl: 15m") || strings.Contains(body, "groups:") {
		t.Errorf("pushes: a hold lasted to the credential's end, the ttl must stay; the group is replaced by the project:\n%s", pushes.Suggestion.YAML)
	}
	if !slices.ContainsFunc(pushes.Suggestion.Notes, func(n string) bool { return strings.Contains(n, "access_level developer kept") }) {
		t.Errorf("pushes notes: %v", pushes.Suggestion.Notes)
	}
	if s := ruleReport(t, r, "idle").Suggestion; s.Action != ActionRemove {
		t.Errorf("idle: %+v", s)
	}
	if s := ruleReport(t, r, "trial").Suggestion; s.Action != ActionNone {
		t.Errorf("trial (shadow): %+v", s)
	}

	// The suggested policy loads, grants what was used and denies what was not.
	sugg, err := policy.Parse([]byte(r.SuggestedPolicy), "suggested", policy.Options{})
	if err != nil {
		t.Fatalf("%v\n%s", err, r.SuggestedPolicy)
	}
	if got := sugg.Rules(); !slices.Equal(got, []string{"reads-suggested", "pushes-suggested"}) {
		t.Fatalf("suggested rules %v", got)
	}
	enforce := load(t, strings.ReplaceAll(r.SuggestedPolicy, "mode: shadow", "mode: enforce"))
	claims := func(project string) map[string]string {
		return map[string]string{"project_path": project, "ref_protected": "true", "namespace_path": "platform"}
	}
	tests := []struct {
		project, target string
		scopes          []string
		allowed         bool
	}{
		{"platform/app", "platform/lib", []string{"read_repository"}, true},
		{"platform/web", "platform/libs/util", []string{"read_repository"}, true},
		{"platform/app", "platform/tools/cli", []string{"write_repository"}, true},
		{"platform/app", "platform/secret", []string{"read_repository"}, false},
		{"platform/app", "platform/shared", []string{"read_repository"}, false},
		{"platform/app", "platform/lib", []string{"read_registry"}, false},
		{"platform/other", "platform/lib", []string{"read_repository"}, false},
		{"platform/app", "platform/tools/lint", []string{"write_repository"}, false},
	}
	for _, tt := range tests {
		d := enforce.Evaluate(policy.Request{Claims: claims(tt.project), Project: tt.target, Scopes: tt.scopes})
		if d.Allowed != tt.allowed {
			t.Errorf("%s -> %s %v: allowed %v, want %v (%s)", tt.project, tt.target, tt.scopes, d.Allowed, tt.allowed, d.Reason)
		}
		if o := pol.Evaluate(policy.Request{Claims: claims(tt.project), Project: tt.target, Scopes: tt.scopes}); d.Allowed && !o.Allowed {
			t.Errorf("%s -> %s: the suggestion allows what the policy denied", tt.project, tt.target)
		}
	}

	// Never wider: over a grid of jobs, targets and scopes, whatever the
	// suggested rules allow the policy allowed.
	for _, src := range []string{"platform/app", "platform/web", "platform/other", "other/x"} {
		for _, target := range []string{"platform/lib", "platform/libs/util", "platform/shared", "platform/tools/cli", "platform/tools/lint", "platform/secret", "other/thing"} {
			for _, scope := range policy.KnownScopes {
				for _, protected := range []string{"true", "false"} {
					c := claims(src)
					c["ref_protected"] = protected
					req := policy.Request{Claims: c, Project: target, Scopes: []string{scope}}
					if enforce.Evaluate(req).Allowed && !pol.Evaluate(req).Allowed {
						t.Errorf("%s (protected %s) -> %s %s: the suggestion allows what the policy denied", src, protected, target, scope)
					}
				}
			}
		}
	}

	// The text form is itself a policy with the same rules.
	txt := r.Text()
	if p, err := policy.Parse([]byte(txt), "text", policy.Options{}); err != nil || !slices.Equal(p.Rules(), sugg.Rules()) {
		t.Fatalf("text form: %v\n%s", err, txt)
	}
	if !strings.Contains(txt, "# rule idle (enforce): 0 minted") || !strings.Contains(txt, "suggest: remove the rule") {
		t.Errorf("text form:\n%s", txt)
	}
}

func TestTemplatesKeptWhenTheyServed(t *testing.T) {
	pol := load(t, `rules:
  - name: cfg
    match: {namespace_path: platform}
    allow:
      projects: [platform/lib, "{{project_path}}-config"]
      scopes: [read_repository]
      ttl: 10m
`)
	r := analyse(t, pol, func(a *Analysis) {
		r1 := rec("c1", "cfg", "platform/app", "platform/app-config", ledger.ProjectDeployToken, time.Hour, 10*time.Minute, "read_repository")
		a.Add(r1, []ledger.Holder{held(r1, "j", 0, time.Minute)})
	})
	rr := ruleReport(t, r, "cfg")
	// The template served the only target: it stays as written, the unused
	// literal goes; the ttl is at its floor already, the match gains project_path.
	if !strings.Contains(rr.Suggestion.YAML, `projects: ['{{project_path}}-config']`) && !strings.Contains(rr.Suggestion.YAML, `projects: ["{{project_path}}-config"]`) {
		t.Errorf("suggestion:\n%s", rr.Suggestion.YAML)
	}
	if !strings.Contains(rr.Suggestion.YAML, "ttl: 5m") || !strings.Contains(rr.Suggestion.YAML, "project_path: platform/app") {
		t.Errorf("suggestion:\n%s", rr.Suggestion.YAML)
	}
}

func TestKeepWhenAlreadyNarrow(t *testing.T) {
	pol := load(t, `rules:
  - name: tight
    match: {project_path: platform/app}
    allow:
      projects: [platform/lib]
      scopes: [read_repository]
      ttl: 5m
`)
	r := analyse(t, pol, func(a *Analysis) {
		r1 := rec("k1", "tight", "platform/app", "platform/lib", ledger.ProjectDeployToken, time.Hour, 5*time.Minute, "read_repository")
		a.Add(r1, []ledger.Holder{held(r1, "j", 0, 2*time.Minute)})
		// A rule the policy has no more.
		a.Add(rec("g1", "gone", "platform/app", "platform/lib", ledger.ProjectDeployToken, time.Hour, time.Hour, "read_repository"), nil)
	})
	if s := ruleReport(t, r, "tight").Suggestion; s.Action != ActionKeep || s.YAML != "" {
		t.Errorf("tight: %+v", s)
	}
	if g := ruleReport(t, r, "gone"); g.InPolicy || g.Suggestion.Action != ActionNone || g.Jobs != 1 {
		t.Errorf("gone: %+v", g)
	}
	if r.SuggestedPolicy != "rules: []\n" {
		t.Errorf("suggested policy %q", r.SuggestedPolicy)
	}
}

func TestEmptyWindow(t *testing.T) {
	r := analyse(t, load(t, testPolicy), func(*Analysis) {})
	if r.Credentials != 0 || ruleReport(t, r, "idle").Suggestion.Action != ActionNone {
		t.Fatalf("%+v", r)
	}
	if txt := r.Text(); !strings.Contains(txt, "no credential was minted or handed out in the window") || !strings.HasSuffix(txt, "rules: []\n") {
		t.Errorf("text:\n%s", txt)
	}
}

func TestNameTakenAndNoSecrets(t *testing.T) {
	pol := load(t, `rules:
  - name: r
    match: {project_path: "platform/*"}
    allow: {projects: ["platform/**"], scopes: [read_repository]}
  - name: r-suggested
    mode: shadow
    match: {project_path: platform/app}
    allow: {projects: [platform/lib], scopes: [read_repository]}
`)
	r := analyse(t, pol, func(a *Analysis) {
		r1 := rec("n1", "r", "platform/app", "platform/lib", ledger.ProjectDeployToken, time.Hour, time.Hour, "read_repository")
		r1.SecretSHA256 = strings.Repeat("ab", 32)
		r1.SealedSecret = []byte("sealed-bytes")
		a.Add(r1, nil)
	})
	if s := ruleReport(t, r, "r").Suggestion; s.Name != "r-suggested-2" {
		t.Errorf("suggested name %q", s.Name)
	}
	b, _ := json.Marshal(r)
	if strings.Contains(string(b), "abab") || strings.Contains(string(b), "sealed") {
		t.Errorf("a secret's trace in the report: %s", b)
	}
}

func TestRoundTTL(t *testing.T) {
	for _, tt := range []struct{ in, want time.Duration }{
		{0, 5 * time.Minute}, {time.Second, 5 * time.Minute}, {5 * time.Minute, 5 * time.Minute},
		{5*time.Minute + time.Second, 10 * time.Minute}, {time.Hour, time.Hour},
		{time.Hour + time.Second, time.Hour + 15*time.Minute},
	} {
		if got := roundTTL(tt.in); got != tt.want {
			t.Errorf("roundTTL(%s) = %s, want %s", tt.in, got, tt.want)
		}
	}
}

func TestParseSubject(t *testing.T) {
	for _, tt := range []struct{ sub, project, ref string }{
		{"project_path:g/p:ref_type:branch:ref:main", "g/p", "branch:main"},
		{"project_path:g/sub/p:ref_type:tag:ref:v1:x", "g/sub/p", "tag:v1:x"},
		{"project_path:g/p", "g/p", ""},
	} {
		p, r, ok := parseSubject(tt.sub)
		if !ok || p != tt.project || r != tt.ref {
			t.Errorf("parseSubject(%q) = %q %q %v", tt.sub, p, r, ok)
		}
	}
	if _, _, ok := parseSubject("user:42"); ok {
		t.Error("a non-CI subject parsed")
	}
}
