// Package policy provides gltoken's trust policy: which GitLab CI/CD jobs,
// identified by the claims of their verified ID token, may obtain which access
// to which repositories. Load (or Parse) reads the YAML policy of docs/reference.md
// (contrib/policy.yaml is a commented example) and rejects, with every problem and
// its line, anything ambiguous; Evaluate decides a Request deterministically, deny
// by default, and explains itself.
//
// Matching rules:
//   - Rules are tried in file order; the first rule whose match accepts the
//     claims, whose allow.projects/allow.groups accept the target and whose
//     allow.scopes contain every requested scope wins. Nothing is widened: the
//     granted scopes are the requested ones.
//   - Globs are doublestar globs: '*' and '?' never cross '/', '**' as a whole
//     segment does (so "g/**" also matches "g" itself), {a,b} alternates,
//     [abc] is a class, '\' escapes.
//   - Matching is case-sensitive. GitLab looks paths up case-insensitively,
//     but the ID token carries the canonical path, so write patterns with the
//     canonical case.
//   - "{{claim}}" in allow.projects/allow.groups is replaced by the claim's
//     value with every glob metacharacter escaped: a claim never acts as glob
//     syntax. A missing or empty claim makes the pattern match nothing. A
//     claim that is not a path (ref, environment, user_login, …) stands for
//     one path segment: a value with '/' makes the pattern match nothing.
//     Path claims (project_path, namespace_path, job_*_path) insert a path.
//   - A claim named in match that the token lacks never matches.
//   - allow.groups is checked before allow.projects: a project anywhere below
//     a listed group (never the group path itself) is allowed and
//     Decision.Group names that group. For a glob group entry the shortest
//     matching prefix of the project path is the group.
//   - On https://gitlab.com (Options.GitLabURL), which all tenants share, a
//     rule must pin project_path, namespace_path, project_id or namespace_id
//     with patterns whose first segment is literal, and every allow entry must
//     start with a literal top-level group or a {{namespace_path}} /
//     {{project_path}} (or job_*_path) template.
//   - A rule with mode: shadow takes no part in the decision (see ModeShadow);
//     Decision.Shadow reports its verdict.
//
// Merge requests from forks: a job of a merge-request pipeline from a fork
// runs in the parent project with the fork's code. GitLab (Gitlab::Ci::Jwt)
// names the fork — the merge request's source project — in project_*,
// namespace_*, user_access_level and sub, and the parent in job_project_* and
// job_namespace_* (GitLab 18.4+); ci_config_ref_uri names the parent's CI file
// at the fork's branch. GitLab versions before the fix of the project_* claims
// put the parent in project_* as well, so there pinning project_path does not
// keep a fork's job out. Every rule therefore refuses such a job unless it
// sets allow_fork_merge_requests: true: a job is taken for a fork's when
// project_id differs from job_project_id (or project_path from
// job_project_path), and a merge_request_event pipeline whose token has no
// job_project_id (GitLab before 18.4) counts as one, as it cannot be told
// apart. The guard is checked last, so a denial names it when it was all that
// stood in the way.
package policy

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"gltoken.dev/gltoken/internal/gitlabpath"
)

// Policy is a loaded, validated trust policy. It is immutable and safe for
// concurrent use; reload by loading a new one.
type Policy struct {
	rules    []*rule
	enforced int // how many rules are in mode enforce
	names    []string
	warnings []string
}

// Warnings returns what is legal but probably not meant (a ttl above
// max_ttl, an access_level that has no effect, write access on every
// top-level group), each as `file:line: rule "name": field: warning: message`.
func (p *Policy) Warnings() []string {
	if p == nil {
		return nil
	}
	return append([]string(nil), p.warnings...)
}

type rule struct {
	name        string
	line        int
	match       []claimMatch
	projects    []target
	groups      []target
	scopes      scopeSet
	scopeList   []string
	ttl         time.Duration
	accessLevel int
	reuse       Reuse
	allowForks  bool // allow_fork_merge_requests
	// requireRunningJob: refuse ID tokens of jobs no longer running.
	requireRunningJob bool
	shadow            bool // mode: shadow
	fingerprint       string
	// As written, for Spec: whether ttl and access_level were set, and
	// acknowledge_api_maintainer.
	ttlSet, accessLevelSet, acknowledged bool
}

// Reuse says which jobs may share a credential minted under a rule.
type Reuse string

const (
	// ReuseProject (the default): a live credential is handed to every job
	// of the same source project that passes the same rule for the same
	// target, kind, scopes and role, as long as it expires no later than
	// that job's ID token.
	ReuseProject Reuse = "project"
	// ReuseJob: one credential per job.
	ReuseJob Reuse = "job"
)

type claimMatch struct {
	claim string
	line  int
	globs []string
	// Trace texts, built once at load time to keep Evaluate cheap.
	failPrefix, failSuffix, failMissing string
}

func newClaimMatch(claim string, line int, globs []string) claimMatch {
	m := claimMatch{claim: claim, line: line, globs: globs}
	m.failPrefix = "match." + claim + ": "
	m.failSuffix = " does not match " + m.describe()
	m.failMissing = "match." + claim + ": claim missing from the ID token"
	return m
}

// Request is what a caller asks for.
type Request struct {
	Claims  map[string]string // verified ID-token claims, string form ("true"/"false", decimal numbers)
	Project string            // target project full path, e.g. "platform/lib" (no .git, no leading slash)
	Scopes  []string          // requested scopes
}

// Decision is the outcome of Evaluate.
type Decision struct {
	Allowed     bool
	Rule        string        // the matching rule's name
	Scopes      []string      // the granted scopes: the requested ones, deduplicated, in request order
	TTL         time.Duration // the rule's ttl (DefaultTTL if it names none)
	AccessLevel int           // the rule's role for access tokens (default developer, 30)
	Group       string        // set when the target is allowed through allow.groups: the group path containing the project
	Reuse       Reuse         // which jobs may share the credential (the rule's reuse, default project)
	// RequireRunningJob: the rule's require_running_job; the exchange
	// refuses the ID token of a job that is no longer running.
	RequireRunningJob bool
	// RuleFingerprint identifies the matching rule's content (hex SHA-256):
	// it changes when a reload changes the rule.
	RuleFingerprint string
	Reason          string // when denied: one line saying which check failed, for the closest rule
	// ScopeDenied is set when denied and the closest rule accepted the job
	// and the target but not every requested scope (invalid_scope rather
	// than invalid_target).
	ScopeDenied bool
	Trace       []Step // one Step per rule, in file order
	// Shadow holds, in file order, the verdict of each rule in mode shadow
	// whose match accepted the job's claims (see Mode).
	Shadow []ShadowResult
}

// Mode says whether a rule's verdict is enforced.
type Mode string

const (
	// ModeEnforce (the default): the rule takes part in the decision.
	ModeEnforce Mode = "enforce"
	// ModeShadow: the rule never grants, never denies and never stops the
	// search; the enforced decision is the policy's without its shadow rules.
	// Each shadow rule whose match accepts the job's claims is judged on its
	// own, whatever the other rules decide, and Decision.Shadow says whether
	// it would allow the request or which of its checks would deny it. A
	// shadow rule whose match does not accept the claims is not about the
	// job and is not reported.
	ModeShadow Mode = "shadow"
)

// ShadowResult is a shadow rule's verdict on a request.
type ShadowResult struct {
	Rule       string
	WouldAllow bool
	Failed     string // when it would deny: the first failed check
}

// Step is one rule's part of a decision trace.
type Step struct {
	Rule    string
	Shadow  bool // a rule in mode shadow: Matched means it would allow
	Matched bool
	Failed  string // the first failed check, e.g. `allow.scopes: write_repository not allowed`
}

// RuleFingerprint returns the fingerprint of the rule named name (see
// Decision.RuleFingerprint), or false when the policy has no such rule.
func (p *Policy) RuleFingerprint(name string) (string, bool) {
	if p == nil {
		return "", false
	}
	for _, r := range p.rules {
		if r.name == name {
			return r.fingerprint, true
		}
	}
	return "", false
}

// Shadow reports whether the rule named name is in mode shadow.
func (p *Policy) Shadow(name string) bool {
	if p == nil {
		return false
	}
	for _, r := range p.rules {
		if r.name == name {
			return r.shadow
		}
	}
	return false
}

// Rules returns the rule names in file order.
func (p *Policy) Rules() []string {
	if p == nil {
		return nil
	}
	return append([]string(nil), p.names...)
}

// stages of a rule's evaluation, in order; a higher stage got further.
const (
	stageClaims = iota
	stageTarget
	stageScopes
	stageFork // everything but the fork merge-request guard passed
	stageAllowed
)

type outcome struct {
	stage   int
	matched int // checks passed before the failure (match keys, target, scopes): ranks closeness
	failed  string
	group   string
}

// Evaluate decides req. It never widens: a request is granted exactly as
// asked or denied.
func (p *Policy) Evaluate(req Request) Decision {
	var d Decision
	if p == nil {
		d.Reason = "no policy loaded"
		return d
	}
	d.Trace = make([]Step, len(p.rules))
	want, scopes, bad := checkRequest(req)
	if bad != "" {
		for i, r := range p.rules {
			d.Trace[i] = Step{Rule: r.name, Failed: bad}
		}
		d.Reason = bad
		return d
	}
	var q quoter
	p.enforce(&d, req, want, scopes, &q)
	p.shadow(&d, req, want, &q)
	return d
}

// enforce makes the decision of the rules in mode enforce: the first that
// allows wins; otherwise the closest one gives the reason.
func (p *Policy) enforce(d *Decision, req Request, want scopeSet, scopes []string, q *quoter) {
	if p.enforced == 0 {
		if len(p.rules) == 0 {
			d.Reason = "the policy has no rules, so everything is denied"
		} else {
			d.Reason = "the policy has no rules in mode enforce, so everything is denied"
		}
		return
	}
	best, bestRule := outcome{stage: -1}, -1
	for i, r := range p.rules {
		if r.shadow {
			continue
		}
		o := r.evaluate(req, want, q)
		d.Trace[i] = Step{Rule: r.name, Matched: o.stage == stageAllowed, Failed: o.failed}
		if o.stage == stageAllowed {
			notReached := fmt.Sprintf("not reached: rule %q matched first", r.name)
			for j := i + 1; j < len(p.rules); j++ {
				if !p.rules[j].shadow {
					d.Trace[j] = Step{Rule: p.rules[j].name, Failed: notReached}
				}
			}
			d.Allowed = true
			d.Rule = r.name
			d.Scopes = scopes
			d.TTL = r.ttl
			d.AccessLevel = r.accessLevel
			d.Group = o.group
			d.Reuse = r.reuse
			d.RequireRunningJob = r.requireRunningJob
			d.RuleFingerprint = r.fingerprint
			return
		}
		// The closest rule is the one that passed the most checks (a deploy
		// rule failing only on environment beats a read rule failing on the
		// target); among equals the one that got further, then the first.
		if o.matched > best.matched || (o.matched == best.matched && o.stage > best.stage) {
			best, bestRule = o, i
		}
	}
	d.ScopeDenied = best.stage == stageScopes
	if best.stage == stageClaims {
		d.Reason = fmt.Sprintf("no rule matches this job's ID token (closest: rule %q: %s)", p.rules[bestRule].name, best.failed)
	} else {
		d.Reason = fmt.Sprintf("no rule allows this request (closest: rule %q: %s)", p.rules[bestRule].name, best.failed)
	}
}

// shadow judges every shadow rule on its own (see ModeShadow) and fills in
// its trace step and, when its match accepted the claims, d.Shadow.
func (p *Policy) shadow(d *Decision, req Request, want scopeSet, q *quoter) {
	for i, r := range p.rules {
		if !r.shadow {
			continue
		}
		o := r.evaluate(req, want, q)
		d.Trace[i] = Step{Rule: r.name, Shadow: true, Matched: o.stage == stageAllowed, Failed: o.failed}
		if o.stage > stageClaims {
			d.Shadow = append(d.Shadow, ShadowResult{Rule: r.name, WouldAllow: o.stage == stageAllowed, Failed: o.failed})
		}
	}
}

// checkRequest validates the request itself and returns the wanted scope
// set and the deduplicated scope list, or a reason.
func checkRequest(req Request) (scopeSet, []string, string) {
	if len(req.Scopes) == 0 {
		return 0, nil, "request: no scopes requested"
	}
	var want scopeSet
	scopes := make([]string, 0, len(req.Scopes))
	for _, s := range req.Scopes {
		bit, ok := scopeBit(s)
		if !ok {
			return 0, nil, fmt.Sprintf("request: unknown scope %s (known: %s)", strconv.Quote(s), strings.Join(scopeNames[:], ", "))
		}
		if want&bit == 0 {
			scopes = append(scopes, s)
		}
		want |= bit
	}
	if !gitlabpath.ValidProject(req.Project) {
		return 0, nil, fmt.Sprintf("request: %s is not a GitLab project path (want group/project)", strconv.Quote(req.Project))
	}
	return want, scopes, ""
}

// quoter remembers the last claim value it quoted: consecutive rules that
// fail on the same claim (the common case) share one strconv.Quote.
type quoter struct{ in, out string }

func (q *quoter) quote(v string) string {
	if q.out == "" || q.in != v {
		q.in, q.out = v, strconv.Quote(v)
	}
	return q.out
}

func (r *rule) evaluate(req Request, want scopeSet, q *quoter) outcome {
	for i := range r.match {
		m := &r.match[i]
		v, ok := req.Claims[m.claim]
		if !ok {
			return outcome{stage: stageClaims, matched: i, failed: m.failMissing}
		}
		if !m.accepts(v) {
			return outcome{stage: stageClaims, matched: i, failed: m.failPrefix + q.quote(v) + m.failSuffix}
		}
	}
	group, ok := r.allowsTarget(req)
	if !ok {
		what := "allow.projects"
		switch {
		case len(r.projects) == 0:
			what = "allow.groups"
		case len(r.groups) > 0:
			what = "allow.projects/allow.groups"
		}
		return outcome{stage: stageTarget, matched: len(r.match), failed: fmt.Sprintf("%s: %s not listed", what, req.Project)}
	}
	if missing := want &^ r.scopes; missing != 0 {
		for _, s := range req.Scopes {
			if bit, _ := scopeBit(s); missing&bit != 0 {
				return outcome{stage: stageScopes, matched: len(r.match) + 1, failed: fmt.Sprintf("allow.scopes: %s not allowed (allowed: %s)", s, strings.Join(r.scopeList, ", "))}
			}
		}
	}
	// Last, so that a denial names the fork when the rule would otherwise
	// have served the request.
	if !r.allowForks {
		if why := forkMergeRequest(req.Claims); why != "" {
			return outcome{stage: stageFork, matched: len(r.match) + 2, failed: why}
		}
	}
	return outcome{stage: stageAllowed, group: group}
}

// forkMergeRequest says why the claims may belong to a job of a merge-request
// pipeline from a fork, or "" when they do not. GitLab names the fork (the
// merge request's source project) in project_* and namespace_*, and the
// project the job runs in in job_project_* (GitLab 18.4+): they differ only
// for such a job. A merge-request pipeline whose token has no job_project_id
// (GitLab before 18.4) cannot be told from a fork's, and counts as one.
func forkMergeRequest(c map[string]string) string {
	const fix = "; a rule serves such jobs only with " + AllowForkMergeRequestsKey + ": true"
	if id, job := c["project_id"], c["job_project_id"]; id != "" && job != "" {
		if id != job {
			return "merge request from a fork: project_id " + strconv.Quote(id) + " is not job_project_id " + strconv.Quote(job) + fix
		}
		return ""
	}
	if path, job := c["project_path"], c["job_project_path"]; path != "" && job != "" {
		if path != job {
			return "merge request from a fork: project_path " + strconv.Quote(path) + " is not job_project_path " + strconv.Quote(job) + fix
		}
		return ""
	}
	if c["pipeline_source"] == "merge_request_event" {
		return "merge-request pipeline whose ID token has no job_project_id (GitLab before 18.4): it may come from a fork" + fix
	}
	return ""
}

func (m *claimMatch) accepts(v string) bool {
	for _, g := range m.globs {
		if matchGlob(g, v) {
			return true
		}
	}
	return false
}

func (m *claimMatch) describe() string {
	if len(m.globs) == 1 {
		return strconv.Quote(m.globs[0])
	}
	q := make([]string, len(m.globs))
	for i, g := range m.globs {
		q[i] = strconv.Quote(g)
	}
	return "any of [" + strings.Join(q, ", ") + "]"
}

// allowsTarget checks allow.groups first (the rule opted in to serving its
// groups through one group credential), then allow.projects. For a group
// entry it returns the shortest path prefix of the project that the entry
// matches: the group that contains the project.
func (r *rule) allowsTarget(req Request) (string, bool) {
	if len(r.groups) > 0 {
		for i := range r.groups {
			g, ok := r.groups[i].expand(req.Claims)
			if !ok {
				continue
			}
			for j := 0; j < len(req.Project); j++ {
				if req.Project[j] != '/' {
					continue
				}
				if prefix := req.Project[:j]; matchGlob(g, prefix) {
					return prefix, true
				}
			}
		}
	}
	for i := range r.projects {
		g, ok := r.projects[i].expand(req.Claims)
		if ok && matchGlob(g, req.Project) {
			return "", true
		}
	}
	return "", false
}
