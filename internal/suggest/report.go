package suggest

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"gltoken.dev/gltoken/internal/ledger"
	"gltoken.dev/gltoken/internal/policy"
)

// Actions a suggestion can name.
const (
	ActionNarrow = "narrow" // the rule allows more than was used: Name/YAML hold a narrower copy
	ActionKeep   = "keep"   // the rule is as narrow as its use shows
	ActionRemove = "remove" // no credential was minted or handed out under it in the window
	ActionNone   = "none"   // nothing to judge (mode shadow, or a rule no longer in the policy)
)

// Report is the outcome of an Analysis; its JSON form is documented in
// docs/reference.md.
type Report struct {
	Since       time.Time    `json:"since"`
	Until       time.Time    `json:"until"`
	Credentials int          `json:"credentials"`
	Rules       []RuleReport `json:"rules"`
	// SuggestedPolicy is a policy document (rules: …) with every suggested
	// rule, in mode shadow; "rules: []" when there is none.
	SuggestedPolicy string `json:"suggested_policy"`
}

// RuleReport is one rule's use in the window and the suggestion for it.
type RuleReport struct {
	Rule     string `json:"rule"`
	Mode     string `json:"mode"`      // enforce, shadow, or "" for a rule no longer in the policy
	InPolicy bool   `json:"in_policy"` // false: records name a rule the policy has no more
	Minted   int    `json:"minted"`    // records created in the window (abandoned ones included)
	// Abandoned: mints GitLab refused (nothing exists).
	Abandoned int `json:"abandoned"`
	// HandedOut: holds taken in the window (every job a credential was handed to, reuse included).
	HandedOut    int            `json:"handed_out"`
	Jobs         int            `json:"jobs"`
	Kinds        map[string]int `json:"kinds"`
	Sources      []Source       `json:"sources"`
	Targets      []Target       `json:"targets"`
	ScopesUsed   []string       `json:"scopes_used"`
	ScopesUnused []string       `json:"scopes_unused"`
	TTLSeconds   int64          `json:"ttl_seconds"`
	AccessLevel  string         `json:"access_level"`
	// LifetimeMaxSeconds: the longest a credential minted in the window was valid.
	LifetimeMaxSeconds int64      `json:"lifetime_max_seconds"`
	Holds              Holds      `json:"holds"`
	Suggestion         Suggestion `json:"suggestion"`
}

// Source is a project whose jobs got credentials under the rule.
type Source struct {
	Project     string   `json:"project"`
	Credentials int      `json:"credentials"`
	Refs        []string `json:"refs"` // "branch:main", "tag:v1"
}

// Target is where credentials were minted: a project or group and the kind.
type Target struct {
	Path        string `json:"path"`
	Kind        string `json:"kind"`
	Credentials int    `json:"credentials"`
}

// Holds says how long jobs held the credentials.
type Holds struct {
	Count    int `json:"count"`
	Released int `json:"released"`
	// HeldToEnd: holds that lasted until the credential expired (the job
	// needed its whole ttl, or outlived it).
	HeldToEnd  int   `json:"held_to_end"`
	MaxSeconds int64 `json:"max_seconds"`
}

// Suggestion is what to do with a rule.
type Suggestion struct {
	Action  string   `json:"action"`
	Name    string   `json:"name,omitempty"`    // the suggested rule's name (narrow)
	Changes []string `json:"changes,omitempty"` // what the suggested rule narrows, one line each
	Notes   []string `json:"notes,omitempty"`   // what could not be judged
	YAML    string   `json:"yaml,omitempty"`    // the suggested rule as a policy list item
}

// Report judges every rule of the policy (file order) and every rule name
// the ledger has that the policy lacks (sorted). The suggested policy is
// checked with policy.Parse: an error means a suggestion would not load.
func (a *Analysis) Report() (*Report, error) {
	r := &Report{Since: a.opts.Since.UTC(), Until: a.opts.Until.UTC(), Credentials: a.seen}
	names := map[string]bool{}
	for _, n := range a.pol.Rules() {
		names[n] = true
	}
	taken := func(n string) bool { return names[n] }
	var nodes []*yaml.Node
	for _, name := range a.pol.Rules() {
		spec, _ := a.pol.Spec(name)
		rr, node := a.judge(name, &spec, taken)
		if node != nil {
			names[rr.Suggestion.Name] = true
			nodes = append(nodes, node)
		}
		r.Rules = append(r.Rules, rr)
	}
	for _, name := range sortedKeys(a.rules) {
		if _, ok := a.pol.Spec(name); !ok {
			rr, _ := a.judge(name, nil, taken)
			r.Rules = append(r.Rules, rr)
		}
	}
	doc, err := policyDoc(nodes)
	if err != nil {
		return nil, err
	}
	if _, err := policy.Parse([]byte(doc), "suggested policy", a.opts.Policy); err != nil {
		return nil, fmt.Errorf("the suggested policy does not load: %w", err)
	}
	r.SuggestedPolicy = doc
	for i := range r.Rules {
		if n := r.Rules[i].Suggestion.Name; n != "" {
			for _, node := range nodes {
				if ruleName(node) == n {
					item, err := policyItem(node)
					if err != nil {
						return nil, err
					}
					r.Rules[i].Suggestion.YAML = item
				}
			}
		}
	}
	return r, nil
}

func (a *Analysis) judge(name string, spec *policy.RuleSpec, taken func(string) bool) (RuleReport, *yaml.Node) {
	u := a.rules[name]
	if u == nil {
		u = &use{}
	}
	rr := RuleReport{Rule: name, Minted: u.mints, Abandoned: u.abandoned, HandedOut: u.handedOut, Jobs: len(u.jobs),
		Kinds: map[string]int{}, Sources: []Source{}, Targets: []Target{}, ScopesUsed: []string{}, ScopesUnused: []string{},
		LifetimeMaxSeconds: int64(u.lifetimeMax / time.Second),
		Holds:              Holds{Count: u.holds, Released: u.released, HeldToEnd: u.toEnd, MaxSeconds: int64(u.holdMax / time.Second)}}
	for k, n := range u.kinds {
		rr.Kinds[string(k)] = n
	}
	for _, p := range sortedKeys(u.sources) {
		s := u.sources[p]
		rr.Sources = append(rr.Sources, Source{Project: p, Credentials: s.credentials, Refs: sortedKeys(s.refs)})
	}
	for t, n := range u.targets {
		rr.Targets = append(rr.Targets, Target{Path: t.path, Kind: string(t.kind), Credentials: n})
	}
	slices.SortFunc(rr.Targets, func(x, y Target) int { return strings.Compare(x.Path+" "+x.Kind, y.Path+" "+y.Kind) })
	if spec == nil {
		rr.ScopesUsed = sortedKeys(u.scopes)
		rr.Suggestion = Suggestion{Action: ActionNone, Notes: []string{"the policy has no rule of this name any more"}}
		return rr, nil
	}
	rr.InPolicy = true
	rr.Mode = string(spec.Mode)
	rr.TTLSeconds = int64(spec.TTL / time.Second)
	rr.AccessLevel = policy.RoleName(spec.AccessLevel)
	for _, s := range spec.Scopes {
		if u.scopes[s] {
			rr.ScopesUsed = append(rr.ScopesUsed, s)
		} else {
			rr.ScopesUnused = append(rr.ScopesUnused, s)
		}
	}
	switch {
	case spec.Mode == policy.ModeShadow:
		rr.Suggestion = Suggestion{Action: ActionNone, Notes: []string{"mode shadow: the rule mints nothing; its verdicts are the audit log's shadow events"}}
		return rr, nil
	case u.mints == 0 && u.handedOut == 0:
		if a.seen == 0 {
			rr.Suggestion = Suggestion{Action: ActionNone, Notes: []string{"nothing was minted in the window: nothing to judge the rule by"}}
		} else {
			rr.Suggestion = Suggestion{Action: ActionRemove, Changes: []string{"no credential was minted or handed out under this rule in the window"}}
		}
		return rr, nil
	}
	n := narrow(spec, u)
	for _, s := range sortedKeys(u.scopes) {
		if !slices.Contains(spec.Scopes, s) {
			n.notes = append(n.notes, "scope "+s+" was used but the rule no longer allows it")
		}
	}
	n.ttl(spec, u)
	if spec.AccessLevelSet || slices.ContainsFunc(spec.Scopes, func(s string) bool { return !policy.DeployTokenScope(s) }) {
		n.notes = append(n.notes, "access_level "+rr.AccessLevel+" kept: the ledger keeps no record of what a job did with its role, so whether a lower one would do is not known")
	}
	rr.Suggestion = Suggestion{Action: ActionKeep, Notes: n.notes}
	if len(n.changes) == 0 {
		return rr, nil
	}
	sugg := suggestedName(name, taken)
	rr.Suggestion = Suggestion{Action: ActionNarrow, Name: sugg, Changes: n.changes, Notes: n.notes}
	return rr, n.node(sugg)
}

// suggestedName is "<rule>-suggested", or with -2, -3… when that is taken;
// cut so that it stays a valid rule name (at most 128 bytes).
func suggestedName(rule string, taken func(string) bool) string {
	for i := 1; ; i++ {
		suffix := "-suggested"
		if i > 1 {
			suffix += fmt.Sprintf("-%d", i)
		}
		base := rule
		for len(base)+len(suffix) > 128 {
			_, size := lastRune(base)
			base = base[:len(base)-size]
		}
		if n := base + suffix; !taken(n) {
			return n
		}
	}
}

func lastRune(s string) (rune, int) {
	for i := len(s) - 1; i >= 0; i-- {
		if s[i]&0xC0 != 0x80 {
			return []rune(s[i:])[0], len(s) - i
		}
	}
	return 0, 1
}

// narrowed is a rule being narrowed: its parts as they will be printed.
type narrowed struct {
	spec     *policy.RuleSpec
	match    []policy.MatchSpec
	projects []string
	groups   []string
	scopes   []string
	ttlVal   time.Duration
	ttlSet   bool
	changes  []string
	notes    []string
}

func narrow(spec *policy.RuleSpec, u *use) *narrowed {
	n := &narrowed{spec: spec, ttlVal: spec.TTL, ttlSet: spec.TTLSet}
	n.narrowMatch(u)
	n.narrowTargets(u)
	for _, s := range spec.Scopes {
		if u.scopes[s] {
			n.scopes = append(n.scopes, s)
		}
	}
	if dropped := len(spec.Scopes) - len(n.scopes); dropped > 0 && len(n.scopes) > 0 {
		var gone []string
		for _, s := range spec.Scopes {
			if !u.scopes[s] {
				gone = append(gone, s)
			}
		}
		n.changes = append(n.changes, "allow.scopes: drop "+strings.Join(gone, ", ")+" (never used)")
	} else if len(n.scopes) == 0 {
		n.scopes = spec.Scopes
	}
	return n
}

// narrowMatch replaces the project_path globs with the source projects
// seen, each one the original globs accept (a rule without a project_path
// key gets one). Other keys stay as written.
func (n *narrowed) narrowMatch(u *use) {
	n.match = slices.Clone(n.spec.Match)
	if u.rawSubjects || len(u.sources) == 0 {
		if u.rawSubjects {
			n.notes = append(n.notes, "match kept: some subjects are not GitLab's project_path:… form")
		}
		return
	}
	at := slices.IndexFunc(n.match, func(m policy.MatchSpec) bool { return m.Claim == "project_path" })
	var globs []string
	for _, p := range sortedKeys(u.sources) {
		if at >= 0 && !slices.ContainsFunc(n.match[at].Globs, func(g string) bool { return policy.MatchPattern(g, p) }) {
			n.notes = append(n.notes, "source project "+p+" is not matched by the rule as it is now")
			continue
		}
		globs = append(globs, policy.EscapeGlob(p))
	}
	if len(globs) == 0 {
		return
	}
	switch {
	case at < 0:
		n.match = append([]policy.MatchSpec{{Claim: "project_path", Globs: globs}}, n.match...)
		n.changes = append(n.changes, "match.project_path: "+strings.Join(globs, ", ")+" (the projects whose jobs used it)")
	case !sameSet(n.match[at].Globs, globs):
		n.changes = append(n.changes, fmt.Sprintf("match.project_path: %s instead of %s", strings.Join(globs, ", "), strings.Join(n.match[at].Globs, ", ")))
		n.match[at] = policy.MatchSpec{Claim: "project_path", Globs: globs}
	}
}

// narrowTargets replaces every untemplated allow entry by the targets it
// served. Group kinds were allowed through allow.groups (their owner is the
// group); a project's credential through allow.projects or through a group
// containing it (an access token is minted on the project even then), and
// it is named in allow.projects. Templated entries are kept when a target is
// left that no untemplated entry explains.
func (n *narrowed) narrowTargets(u *use) {
	var plain, tmplProjects, plainGroups, tmplGroups []string
	for _, p := range n.spec.Projects {
		if policy.Templated(p) {
			tmplProjects = append(tmplProjects, p)
		} else {
			plain = append(plain, p)
		}
	}
	for _, g := range n.spec.Groups {
		if policy.Templated(g) {
			tmplGroups = append(tmplGroups, g)
		} else {
			plainGroups = append(plainGroups, g)
		}
	}
	matchesAny := func(globs []string, v string) bool {
		return slices.ContainsFunc(globs, func(g string) bool { return policy.MatchPattern(g, v) })
	}
	underGroup := func(p string) bool {
		for i := range len(p) {
			if p[i] == '/' && matchesAny(plainGroups, p[:i]) {
				return true
			}
		}
		return false
	}
	projects, groups := map[string]bool{}, map[string]bool{}
	needTemplates := false
	for t := range u.targets {
		switch {
		case t.kind == ledger.GroupDeployToken || t.kind == ledger.GroupAccessToken:
			if matchesAny(plainGroups, t.path) {
				groups[t.path] = true
				continue
			}
		case matchesAny(plain, t.path) || underGroup(t.path):
			projects[t.path] = true
			continue
		}
		if len(tmplProjects)+len(tmplGroups) > 0 {
			needTemplates = true
		} else {
			n.notes = append(n.notes, "target "+t.path+" ("+string(t.kind)+") is not allowed by the rule as it is now")
		}
	}
	for _, p := range sortedKeys(projects) {
		n.projects = append(n.projects, policy.EscapeGlob(p))
	}
	for _, g := range sortedKeys(groups) {
		n.groups = append(n.groups, policy.EscapeGlob(g))
	}
	if needTemplates {
		n.projects = append(n.projects, tmplProjects...)
		n.groups = append(n.groups, tmplGroups...)
		n.notes = append(n.notes, "templated entries kept as written: which one served a target depends on the job's claims")
	}
	if len(n.projects)+len(n.groups) == 0 {
		// Nothing the rule allows now was used: keep the targets as written
		// (the rule changed since; judge it again later).
		n.projects, n.groups = n.spec.Projects, n.spec.Groups
		return
	}
	switch {
	case len(n.projects) == 0 && len(n.spec.Projects) > 0:
		n.changes = append(n.changes, "allow.projects: dropped (no target used it)")
	case !sameSet(n.projects, n.spec.Projects) && len(n.spec.Projects) == 0:
		n.changes = append(n.changes, fmt.Sprintf("allow.projects: [%s] (the projects used) instead of groups", strings.Join(n.projects, ", ")))
	case !sameSet(n.projects, n.spec.Projects):
		n.changes = append(n.changes, fmt.Sprintf("allow.projects: [%s] instead of [%s]", strings.Join(n.projects, ", "), strings.Join(n.spec.Projects, ", ")))
	}
	switch {
	case len(n.groups) == 0 && len(n.spec.Groups) > 0:
		n.changes = append(n.changes, "allow.groups: dropped (no group credential was minted)")
	case !sameSet(n.groups, n.spec.Groups):
		n.changes = append(n.changes, fmt.Sprintf("allow.groups: [%s] instead of [%s]", strings.Join(n.groups, ", "), strings.Join(n.spec.Groups, ", ")))
	}
}

// ttl cuts the ttl to the longest hold, rounded up, when every hold ended
// before its credential did.
func (n *narrowed) ttl(spec *policy.RuleSpec, u *use) {
	switch {
	case u.holds == 0:
		n.notes = append(n.notes, "ttl kept: no job's hold is recorded")
		return
	case u.released == 0:
		n.notes = append(n.notes, "ttl kept: no job has let go of its credential yet, so how long jobs need one is not known")
		return
	case u.toEnd > 0:
		n.notes = append(n.notes, fmt.Sprintf("ttl kept: %s lasted as long as the credential", plural(u.toEnd, "hold")))
		return
	}
	want := roundTTL(u.holdMax)
	if want >= spec.TTL {
		return
	}
	n.ttlVal, n.ttlSet = want, true
	n.changes = append(n.changes, fmt.Sprintf("allow.ttl: %s instead of %s (jobs held credentials up to %s)", shortDuration(want), shortDuration(spec.TTL), shortDuration(u.holdMax)))
}

func sameSet(a, b []string) bool {
	x, y := slices.Clone(a), slices.Clone(b)
	slices.Sort(x)
	slices.Sort(y)
	return slices.Equal(slices.Compact(x), slices.Compact(y))
}

// node renders the narrowed rule, in mode shadow, as a YAML mapping.
func (n *narrowed) node(name string) *yaml.Node {
	s := n.spec
	m := &yaml.Node{Kind: yaml.MappingNode}
	add := func(parent *yaml.Node, key string, val *yaml.Node) {
		parent.Content = append(parent.Content, str(key), val)
	}
	add(m, "name", str(name))
	add(m, "mode", str(string(policy.ModeShadow)))
	if s.Reuse != "" && s.Reuse != policy.ReuseProject {
		add(m, "reuse", str(string(s.Reuse)))
	}
	if s.AllowForkMergeRequests {
		add(m, policy.AllowForkMergeRequestsKey, str("true"))
	}
	if s.RequireRunningJob {
		add(m, policy.RequireRunningJobKey, str("true"))
	}
	match := &yaml.Node{Kind: yaml.MappingNode}
	for _, k := range n.match {
		if len(k.Globs) == 1 {
			add(match, k.Claim, str(k.Globs[0]))
		} else {
			add(match, k.Claim, list(k.Globs))
		}
	}
	add(m, "match", match)
	allow := &yaml.Node{Kind: yaml.MappingNode}
	if len(n.projects) > 0 {
		add(allow, "projects", list(n.projects))
	}
	if len(n.groups) > 0 {
		add(allow, "groups", list(n.groups))
	}
	add(allow, "scopes", list(n.scopes))
	if n.ttlSet {
		add(allow, "ttl", str(shortDuration(n.ttlVal)))
	}
	if s.AccessLevelSet {
		add(allow, "access_level", str(policy.RoleName(s.AccessLevel)))
	}
	if s.AcknowledgeAPIMaintainer && slices.Contains(n.scopes, "api") && s.AccessLevel >= policy.AccessMaintainer {
		add(allow, policy.AcknowledgeAPIMaintainerKey, str("true"))
	}
	add(m, "allow", allow)
	m.HeadComment = "narrows rule " + s.Name + ":\n" + strings.Join(n.changes, "\n")
	return m
}

func str(v string) *yaml.Node {
	n := &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: v}
	return n
}

func list(vs []string) *yaml.Node {
	l := &yaml.Node{Kind: yaml.SequenceNode, Style: yaml.FlowStyle}
	for _, v := range vs {
		l.Content = append(l.Content, str(v))
	}
	return l
}

func ruleName(n *yaml.Node) string {
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == "name" {
			return n.Content[i+1].Value
		}
	}
	return ""
}

// policyDoc is a policy document with the rules.
func policyDoc(rules []*yaml.Node) (string, error) {
	if len(rules) == 0 {
		return "rules: []\n", nil
	}
	seq := &yaml.Node{Kind: yaml.SequenceNode, Content: rules}
	doc := &yaml.Node{Kind: yaml.MappingNode, Content: []*yaml.Node{str("rules"), seq}}
	return encode(doc)
}

// policyItem is one rule as a list item of rules:, indented as under it.
func policyItem(rule *yaml.Node) (string, error) {
	s, err := encode(&yaml.Node{Kind: yaml.SequenceNode, Content: []*yaml.Node{rule}})
	if err != nil {
		return "", err
	}
	lines := strings.SplitAfter(s, "\n")
	for i, l := range lines {
		if l != "" {
			lines[i] = "  " + l
		}
	}
	return strings.Join(lines, ""), nil
}

func encode(n *yaml.Node) (string, error) {
	var b strings.Builder
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(n); err != nil {
		return "", fmt.Errorf("suggested policy: %w", err)
	}
	if err := enc.Close(); err != nil {
		return "", fmt.Errorf("suggested policy: %w", err)
	}
	return b.String(), nil
}
