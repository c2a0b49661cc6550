package policy

import (
	"slices"
	"strconv"
	"time"
)

// RuleSpec is a loaded rule as its author wrote it, for tools that reason
// about a policy instead of evaluating it (exchanged suggest proposes a
// narrower copy of a rule). It is a copy: changing it changes nothing.
type RuleSpec struct {
	Name string
	Mode Mode
	// Reuse is the rule's reuse (ReuseProject when it names none).
	Reuse                  Reuse
	AllowForkMergeRequests bool
	RequireRunningJob      bool
	// Match lists the match keys in file order.
	Match []MatchSpec
	// Projects and Groups are allow.projects and allow.groups as written,
	// {{claim}} templates included.
	Projects, Groups []string
	// Scopes are allow.scopes, deduplicated, in file order.
	Scopes []string
	// TTL is the rule's ttl (DefaultTTL when TTLSet is false).
	TTL    time.Duration
	TTLSet bool
	// AccessLevel is the rule's role (AccessDeveloper when AccessLevelSet
	// is false).
	AccessLevel              int
	AccessLevelSet           bool
	AcknowledgeAPIMaintainer bool
}

// MatchSpec is one match key: the claim and its globs.
type MatchSpec struct {
	Claim string
	Globs []string
}

// Spec returns the rule named name as written, or false when the policy has
// no such rule.
func (p *Policy) Spec(name string) (RuleSpec, bool) {
	if p == nil {
		return RuleSpec{}, false
	}
	for _, r := range p.rules {
		if r.name != name {
			continue
		}
		s := RuleSpec{Name: r.name, Mode: ModeEnforce, Reuse: r.reuse, AllowForkMergeRequests: r.allowForks,
			RequireRunningJob: r.requireRunningJob, Scopes: slices.Clone(r.scopeList),
			TTL: r.ttl, TTLSet: r.ttlSet, AccessLevel: r.accessLevel, AccessLevelSet: r.accessLevelSet,
			AcknowledgeAPIMaintainer: r.acknowledged}
		if r.shadow {
			s.Mode = ModeShadow
		}
		for _, m := range r.match {
			s.Match = append(s.Match, MatchSpec{Claim: m.claim, Globs: slices.Clone(m.globs)})
		}
		for _, t := range r.projects {
			s.Projects = append(s.Projects, t.raw)
		}
		for _, t := range r.groups {
			s.Groups = append(s.Groups, t.raw)
		}
		return s, true
	}
	return RuleSpec{}, false
}

// Templated reports whether an allow.projects or allow.groups entry holds a
// {{claim}} template: what it matches depends on the job's claims.
func Templated(pattern string) bool {
	parts, err := parseTemplate(pattern)
	return err == nil && parts != nil
}

// MatchPattern reports whether value (a claim value, or a project or group
// path) matches pattern as a rule's match glob or untemplated allow entry
// would: '*' stays in one path segment, '**' crosses them.
func MatchPattern(pattern, value string) bool { return matchGlob(pattern, value) }

// EscapeGlob returns s with every glob metacharacter escaped, so that as a
// pattern it matches s alone.
func EscapeGlob(s string) string { return escapeGlob(s) }

// RoleName is GitLab's name of an access level (guest, reporter, developer,
// maintainer), or its number for any other.
func RoleName(level int) string {
	for name, l := range accessLevels {
		if l == level {
			return name
		}
	}
	return strconv.Itoa(level)
}
