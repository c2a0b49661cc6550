package policy

import (
	"fmt"
	"strings"

	"github.com/bmatcuk/doublestar/v4"

	"gltoken.dev/gltoken/internal/idclaims"
)

// globMeta are the bytes that carry meaning in a doublestar pattern. A claim
// value substituted into a template has each of them escaped with '\', so a
// value such as "a/*" or "{x,y}" matches only itself. ',' is included so a
// value can never split an alternation either.
const globMeta = `*?[]{}\,`

// escapeGlob returns s with every glob metacharacter escaped.
func escapeGlob(s string) string {
	if !strings.ContainsAny(s, globMeta) {
		return s
	}
	var b strings.Builder
	b.Grow(len(s) + 8)
	for i := 0; i < len(s); i++ {
		if strings.IndexByte(globMeta, s[i]) >= 0 {
			b.WriteByte('\\')
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// part is a piece of a target pattern: literal glob text, or a claim whose
// escaped value is substituted at evaluation time.
type part struct {
	lit   string
	claim string
	path  bool // the claim is a GitLab path: its value may span segments
}

// target is an allow.projects or allow.groups entry.
type target struct {
	raw   string
	parts []part // nil when raw holds no template
}

// expand returns the glob for the given claims. It reports false when a
// templated claim is missing or empty: such a pattern matches nothing (an
// empty value must not turn "{{environment}}*" into "*"). It also reports
// false when a claim that is not a GitLab path (ref, environment,
// user_login, …) holds a '/': such a template stands for one path segment, so
// a branch "team-b/x" never turns "platform/{{ref}}-cfg" into
// "platform/team-b/x-cfg". Path claims (project_path, namespace_path and
// their job_* twins) expand to the whole path.
func (t *target) expand(claims map[string]string) (string, bool) {
	if t.parts == nil {
		return t.raw, true
	}
	var b strings.Builder
	b.Grow(len(t.raw) + 32)
	for _, p := range t.parts {
		if p.claim == "" {
			b.WriteString(p.lit)
			continue
		}
		v := claims[p.claim]
		if v == "" || !p.path && strings.IndexByte(v, '/') >= 0 {
			return "", false
		}
		b.WriteString(escapeGlob(v))
	}
	return b.String(), true
}

// parseTemplate splits s into literal and {{claim}} parts. Every "{{" opens a
// template; its claim must be known, and it may not sit inside a [...] class or
// a {...} alternation (where escaping alone could not keep a value literal).
func parseTemplate(s string) ([]part, error) {
	if !strings.Contains(s, "{{") {
		return nil, nil
	}
	var parts []part
	rest := s
	depthBrace, inClass := 0, false
	for {
		i := strings.Index(rest, "{{")
		if i < 0 {
			if rest != "" {
				parts = append(parts, part{lit: rest})
			}
			return parts, nil
		}
		lit := rest[:i]
		depthBrace, inClass = globDepth(lit, depthBrace, inClass)
		if depthBrace > 0 || inClass {
			return nil, fmt.Errorf("template inside [...] or {...} is not supported")
		}
		if lit != "" {
			parts = append(parts, part{lit: lit})
		}
		rest = rest[i+2:]
		j := strings.Index(rest, "}}")
		if j < 0 {
			return nil, fmt.Errorf("unclosed template: %q has no }}", s)
		}
		name := strings.TrimSpace(rest[:j])
		spec, ok := matchableClaim(name)
		if !ok {
			return nil, fmt.Errorf("unknown claim %q in template", name)
		}
		parts = append(parts, part{claim: name, path: spec.Kind == idclaims.Path})
		rest = rest[j+2:]
	}
}

// globDepth scans literal glob text and returns the alternation depth and
// whether a character class is still open at its end.
func globDepth(s string, depth int, inClass bool) (int, bool) {
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '\\':
			i++
		case inClass:
			if c == ']' {
				inClass = false
			}
		case c == '[':
			inClass = true
			if i+1 < len(s) && (s[i+1] == '^' || s[i+1] == '!') {
				i++
			}
			if i+1 < len(s) && s[i+1] == ']' { // "[]...]": ']' first is literal
				i++
			}
		case c == '{':
			depth++
		case c == '}':
			if depth > 0 {
				depth--
			}
		}
	}
	return depth, inClass
}

// placeholder renders a templated pattern with a literal stand-in for every
// claim, for validation and for the gitlab.com first-segment check.
func placeholder(parts []part, raw string) string {
	if parts == nil {
		return raw
	}
	var b strings.Builder
	for _, p := range parts {
		if p.claim != "" {
			b.WriteString("x")
		} else {
			b.WriteString(p.lit)
		}
	}
	return b.String()
}

// hasMeta reports whether s contains any glob metacharacter.
func hasMeta(s string) bool { return strings.ContainsAny(s, globMeta) }

// firstSegmentLiteral reports whether the first path segment of glob pattern
// s is non-empty and free of glob syntax.
func firstSegmentLiteral(s string) bool {
	seg, _, _ := strings.Cut(s, "/")
	return seg != "" && !hasMeta(seg)
}

// targetFirstSegmentOK is the gitlab.com check for an allow entry: its first
// segment must be literal text or a single template of a tenant-pinned path
// claim (namespace_path, project_path, job_*_path).
func targetFirstSegmentOK(t *target) bool {
	if t.parts == nil {
		return firstSegmentLiteral(t.raw)
	}
	first := t.parts[0]
	if first.claim != "" {
		if !tenantTemplateClaims[first.claim] {
			return false
		}
		// A project path always has two or more segments, so text after it
		// only touches its last segment: "{{project_path}}-config" stays in
		// the tenant's top-level group.
		if first.claim == "project_path" || first.claim == "job_project_path" || len(t.parts) == 1 {
			return true
		}
		// A namespace path may be a single segment: the template must end
		// that segment, or "{{namespace_path}}*" ("acme*") would reach
		// other tenants.
		next := t.parts[1]
		return next.claim == "" && strings.HasPrefix(next.lit, "/")
	}
	// Literal start: the first segment must end before any template.
	seg, _, found := strings.Cut(first.lit, "/")
	return found && seg != "" && !hasMeta(seg)
}

// matchGlob matches name against a validated pattern.
func matchGlob(pattern, name string) bool {
	if !hasMeta(pattern) {
		return pattern == name
	}
	ok, err := doublestar.Match(pattern, name)
	return err == nil && ok
}
