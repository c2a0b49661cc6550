package policy

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/bmatcuk/doublestar/v4"
	"go.yaml.in/yaml/v3"

	"gltoken.dev/gltoken/internal/idclaims"
)

// MaxFileSize bounds a policy file; a bigger one is refused, not truncated.
const MaxFileSize = 1 << 20

// DefaultTTL is a rule's ttl when it names none.
const DefaultTTL = time.Hour

// Options tune Load and Parse.
type Options struct {
	// GitLabURL is the GitLab instance the daemon serves. When its host is
	// gitlab.com, which all tenants share, every rule MUST pin a namespace or
	// project and MUST NOT start a target with a wildcard.
	GitLabURL string
	// MaxTTL is the daemon's max_ttl. When set, a rule ttl above it is
	// reported as a warning (the credential gets MaxTTL).
	MaxTTL time.Duration
}

func (o Options) sharedInstance() bool {
	s := strings.TrimSpace(o.GitLabURL)
	if !strings.Contains(s, "://") {
		s = "https://" + s // a bare host name
	}
	u, err := url.Parse(s)
	if err != nil {
		return false
	}
	h := strings.TrimSuffix(strings.ToLower(u.Hostname()), ".")
	return h == "gitlab.com" || h == "www.gitlab.com"
}

// Problem is one thing wrong with a policy file.
type Problem struct {
	Line    int    // 1-based; 0 when unknown
	Rule    string // rule name, or "#N" (1-based position) for a rule without a valid name
	Field   string // e.g. "match.ref_protected", "allow.scopes"
	Message string
}

// LoadError lists every problem found in a policy file.
type LoadError struct {
	File     string
	Problems []Problem
}

// Error prints one problem a line: `file:line: rule "name": field: message`.
func (e *LoadError) Error() string {
	file := e.File
	if file == "" {
		file = "policy"
	}
	var b strings.Builder
	for i, p := range e.Problems {
		if i > 0 {
			b.WriteByte('\n')
		}
		b.WriteString(file)
		if p.Line > 0 {
			b.WriteByte(':')
			b.WriteString(strconv.Itoa(p.Line))
		}
		b.WriteString(": ")
		if p.Rule != "" {
			fmt.Fprintf(&b, "rule %q: ", p.Rule)
		}
		if p.Field != "" {
			b.WriteString(p.Field)
			b.WriteString(": ")
		}
		b.WriteString(p.Message)
	}
	return b.String()
}

// Load reads the policy file at path (at most MaxFileSize bytes) and parses it.
// An invalid policy yields a *LoadError; a file that cannot be read yields the
// wrapped I/O error.
func Load(path string, opts Options) (*Policy, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read policy: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("read policy %s: %w", path, err)
	}
	return Parse(data, path, opts)
}

// Parse parses and validates a policy. file names it in problems. On invalid
// input it returns a *LoadError listing every problem found.
func Parse(data []byte, file string, opts Options) (*Policy, error) {
	p := &parser{file: file, shared: opts.sharedInstance(), maxTTL: opts.MaxTTL, names: map[string]int{}}
	if len(data) > MaxFileSize {
		p.add(0, "", "", fmt.Sprintf("file is larger than %d bytes", MaxFileSize))
		return nil, p.err()
	}
	root, err := decodeYAML(data)
	if err != nil {
		line, msg := yamlErrorLine(err)
		p.add(line, "", "", msg)
		return nil, p.err()
	}
	pol := p.parseRoot(root)
	if len(p.problems) > 0 {
		return nil, p.err()
	}
	for _, w := range p.warnings {
		w.Message = "warning: " + w.Message
		line := (&LoadError{File: file, Problems: []Problem{w}}).Error()
		pol.warnings = append(pol.warnings, line)
	}
	return pol, nil
}

// decodeYAML parses exactly one YAML document into a node tree.
func decodeYAML(data []byte) (root *yaml.Node, err error) {
	defer func() {
		// The YAML library is not ours; a panic on hostile input must
		// become a load error, never a crashed daemon.
		if r := recover(); r != nil {
			root, err = nil, fmt.Errorf("yaml: cannot parse: %v", r)
		}
	}()
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, nil // empty file
		}
		return nil, err
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		if err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("yaml: line %d: more than one YAML document", extra.Line)
	}
	if doc.Kind == yaml.DocumentNode && len(doc.Content) == 1 {
		return doc.Content[0], nil
	}
	return &doc, nil
}

var yamlLineRE = regexp.MustCompile(`^yaml: (?:line (\d+): )?`)

func yamlErrorLine(err error) (int, string) {
	msg := err.Error()
	if m := yamlLineRE.FindStringSubmatch(msg); m != nil {
		line, _ := strconv.Atoi(m[1])
		return line, "invalid YAML: " + msg[len(m[0]):]
	}
	return 0, "invalid YAML: " + msg
}

type parser struct {
	file     string
	shared   bool
	maxTTL   time.Duration
	problems []Problem
	warnings []Problem
	names    map[string]int // rule name -> line of first use
}

func (p *parser) add(line int, rule, field, msg string) {
	p.problems = append(p.problems, Problem{Line: line, Rule: rule, Field: field, Message: msg})
}

func (p *parser) warn(line int, rule, field, msg string) {
	p.warnings = append(p.warnings, Problem{Line: line, Rule: rule, Field: field, Message: msg})
}

func (p *parser) err() error {
	return &LoadError{File: p.file, Problems: p.problems}
}

// mapping returns the key/value pairs of a mapping node, reporting
// duplicate keys, non-scalar keys and aliases.
type kv struct {
	key  string
	line int
	val  *yaml.Node
}

func (p *parser) mapping(n *yaml.Node, rule, field string) ([]kv, bool) {
	if n.Kind == yaml.AliasNode {
		p.add(n.Line, rule, field, "YAML aliases are not supported; write the value out")
		return nil, false
	}
	if n.Kind != yaml.MappingNode {
		p.add(n.Line, rule, field, "must be a mapping, not "+kindName(n))
		return nil, false
	}
	var out []kv
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			p.add(k.Line, rule, field, "keys must be plain strings")
			continue
		}
		if k.Value == "<<" && k.Tag == "!!merge" {
			p.add(k.Line, rule, field, "YAML merge keys are not supported; write the keys out")
			continue
		}
		if seen[k.Value] {
			p.add(k.Line, rule, join(field, k.Value), "duplicate key")
			continue
		}
		seen[k.Value] = true
		out = append(out, kv{key: k.Value, line: k.Line, val: v})
	}
	return out, true
}

// scalar returns a scalar's string value.
func (p *parser) scalar(n *yaml.Node, rule, field string) (string, bool) {
	switch {
	case n.Kind == yaml.AliasNode:
		p.add(n.Line, rule, field, "YAML aliases are not supported; write the value out")
	case n.Kind != yaml.ScalarNode:
		p.add(n.Line, rule, field, "must be a string, not "+kindName(n))
	case n.Tag == "!!null":
		p.add(n.Line, rule, field, "missing value")
	case n.Value == "":
		p.add(n.Line, rule, field, "must not be empty")
	default:
		return n.Value, true
	}
	return "", false
}

// list returns the scalars of a sequence; a single scalar counts as a
// one-element list.
type item struct {
	val  string
	line int
}

func (p *parser) list(n *yaml.Node, rule, field string) ([]item, bool) {
	if n.Kind == yaml.ScalarNode && n.Tag != "!!null" {
		v, ok := p.scalar(n, rule, field)
		if !ok {
			return nil, false
		}
		return []item{{v, n.Line}}, true
	}
	if n.Kind != yaml.SequenceNode {
		if n.Kind == yaml.AliasNode {
			p.add(n.Line, rule, field, "YAML aliases are not supported; write the value out")
		} else {
			p.add(n.Line, rule, field, "must be a string or a list of strings, not "+kindName(n))
		}
		return nil, false
	}
	if len(n.Content) == 0 {
		p.add(n.Line, rule, field, "must not be empty")
		return nil, false
	}
	out := make([]item, 0, len(n.Content))
	ok := true
	for _, c := range n.Content {
		v, good := p.scalar(c, rule, field)
		if !good {
			ok = false
			continue
		}
		out = append(out, item{v, c.Line})
	}
	return out, ok
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.AliasNode:
		return "an alias"
	case yaml.ScalarNode:
		if n.Tag == "!!null" {
			return "null"
		}
		return "a scalar"
	}
	return "a document"
}

func join(a, b string) string {
	if a == "" {
		return b
	}
	return a + "." + b
}

func (p *parser) parseRoot(root *yaml.Node) *Policy {
	if root == nil {
		p.add(1, "", "", "empty policy: want a top-level rules: list (rules: [] denies everything)")
		return nil
	}
	top, ok := p.mapping(root, "", "")
	if !ok {
		return nil
	}
	pol := &Policy{}
	found := false
	for _, e := range top {
		switch e.key {
		case "rules":
			found = true
			pol.rules = p.parseRules(e.val)
		default:
			p.add(e.line, "", e.key, "unknown key (want rules)")
		}
	}
	if !found {
		p.add(root.Line, "", "rules", "missing (rules: [] denies everything)")
	}
	for _, r := range pol.rules {
		pol.names = append(pol.names, r.name)
		if !r.shadow {
			pol.enforced++
		}
	}
	return pol
}

func (p *parser) parseRules(n *yaml.Node) []*rule {
	if n.Kind == yaml.AliasNode {
		p.add(n.Line, "", "rules", "YAML aliases are not supported; write the rules out")
		return nil
	}
	if n.Kind != yaml.SequenceNode {
		p.add(n.Line, "", "rules", "must be a list of rules, not "+kindName(n))
		return nil
	}
	rules := make([]*rule, 0, len(n.Content))
	for i, rn := range n.Content {
		if r := p.parseRule(i, rn); r != nil {
			rules = append(rules, r)
		}
	}
	return rules
}

var ruleKeys = []string{"name", "match", "allow", "reuse", "mode", AllowForkMergeRequestsKey, RequireRunningJobKey}

// RequireRunningJobKey is the rule key that refuses ID tokens of jobs that
// are no longer running.
const RequireRunningJobKey = "require_running_job"

var allowKeys = []string{"projects", "groups", "scopes", "ttl", "access_level", AcknowledgeAPIMaintainerKey}

// AcknowledgeAPIMaintainerKey is the allow key a rule must set to true to grant
// the api scope with the maintainer role. Such a token can create deploy
// tokens and access tokens of its own, which the ledger does not track and
// which may outlive it (a deploy token can be made to never expire): that is
// a deliberate choice, never a default.
const AcknowledgeAPIMaintainerKey = "acknowledge_api_maintainer"

// AllowForkMergeRequestsKey is the rule key that, set to true, lets the rule
// serve jobs of merge-request pipelines from forks (see the package comment).
// Without it such a job is refused whatever its claims match: it runs code
// that someone outside the project wrote.
const AllowForkMergeRequestsKey = "allow_fork_merge_requests"

// choice reads a scalar that must be one of want; msg names the choices.
func (p *parser) choice(n *yaml.Node, rule, field, msg string, want ...string) (string, bool) {
	v, ok := p.scalar(n, rule, field)
	if !ok {
		return "", false
	}
	if !slices.Contains(want, v) {
		p.add(n.Line, rule, field, fmt.Sprintf("%s, not %q", msg, v))
		return "", false
	}
	return v, true
}

// boolean reads a scalar that must be exactly true or false.
func (p *parser) boolean(n *yaml.Node, rule, field string) (bool, bool) {
	v, ok := p.scalar(n, rule, field)
	if !ok {
		return false, false
	}
	if v != "true" && v != "false" {
		p.add(n.Line, rule, field, fmt.Sprintf("want true or false, not %q", v))
		return false, false
	}
	return v == "true", true
}

func (p *parser) parseRule(idx int, n *yaml.Node) *rule {
	label := "#" + strconv.Itoa(idx+1)
	if n.Kind == yaml.AliasNode {
		p.add(n.Line, label, "", "YAML aliases are not supported; write the rule out")
		return nil
	}
	if n.Kind != yaml.MappingNode {
		p.add(n.Line, label, "", "a rule must be a mapping with name, match and allow, not "+kindName(n))
		return nil
	}
	// Find the name first so that every other problem carries it.
	for i := 0; i+1 < len(n.Content); i += 2 {
		if k, v := n.Content[i], n.Content[i+1]; k.Value == "name" && v.Kind == yaml.ScalarNode && v.Value != "" && validName(v.Value) {
			label = v.Value
			break
		}
	}
	before := len(p.problems)
	fields, ok := p.mapping(n, label, "")
	if !ok {
		return nil
	}
	r := &rule{line: n.Line, ttl: DefaultTTL, accessLevel: AccessDeveloper, reuse: ReuseProject}
	var matchNode, allowNode *yaml.Node
	for _, e := range fields {
		switch e.key {
		case "name":
			v, ok := p.scalar(e.val, label, "name")
			if !ok {
				continue
			}
			if !validName(v) {
				p.add(e.val.Line, label, "name", "must be at most 128 printable characters")
				continue
			}
			if first, dup := p.names[v]; dup {
				p.add(e.val.Line, label, "name", fmt.Sprintf("duplicate rule name (first used on line %d)", first))
				continue
			}
			p.names[v] = e.val.Line
			r.name = v
		case "match":
			matchNode = e.val
		case "allow":
			allowNode = e.val
		case "reuse":
			if v, ok := p.choice(e.val, label, "reuse", "want project (one credential for every job of the project) or job (one credential per job)",
				string(ReuseProject), string(ReuseJob)); ok {
				r.reuse = Reuse(v)
			}
		case "mode":
			if v, ok := p.choice(e.val, label, "mode", "want enforce or shadow", string(ModeEnforce), string(ModeShadow)); ok {
				r.shadow = Mode(v) == ModeShadow
			}
		case AllowForkMergeRequestsKey:
			if b, ok := p.boolean(e.val, label, e.key); ok {
				r.allowForks = b
			}
		case RequireRunningJobKey:
			if b, ok := p.boolean(e.val, label, e.key); ok {
				r.requireRunningJob = b
			}
		default:
			p.add(e.line, label, e.key, "unknown key (want "+strings.Join(ruleKeys, ", ")+")")
		}
	}
	if r.name == "" && !hasField(fields, "name") {
		p.add(n.Line, label, "name", "missing")
	}
	if matchNode == nil {
		p.add(n.Line, label, "match", "missing: a rule must match at least one claim")
	} else {
		p.parseMatch(r, label, matchNode)
	}
	if allowNode == nil {
		p.add(n.Line, label, "allow", "missing")
	} else {
		p.parseAllow(r, label, allowNode)
	}
	if len(p.problems) > before {
		return nil
	}
	r.fingerprint = fingerprint(n)
	return r
}

// fingerprint is the hex SHA-256 of a rule's YAML as data: keys, values and
// their order, but not comments, layout or line numbers. A rule whose
// fingerprint changed across a reload grants something else, so what was
// handed out under the old one is not handed out again.
func fingerprint(n *yaml.Node) string {
	h := sha256.New()
	var walk func(n *yaml.Node)
	walk = func(n *yaml.Node) {
		var b [8]byte
		binary.BigEndian.PutUint32(b[:4], uint32(n.Kind))
		binary.BigEndian.PutUint32(b[4:], uint32(len(n.Content)))
		h.Write(b[:])
		for _, s := range []string{n.ShortTag(), n.Value} {
			binary.BigEndian.PutUint32(b[:4], uint32(len(s)))
			h.Write(b[:4])
			h.Write([]byte(s))
		}
		for _, c := range n.Content {
			walk(c)
		}
	}
	walk(n)
	return hex.EncodeToString(h.Sum(nil))
}

func hasField(fields []kv, key string) bool {
	for _, f := range fields {
		if f.key == key {
			return true
		}
	}
	return false
}

func validName(s string) bool {
	if len(s) > 128 {
		return false
	}
	for _, c := range s {
		if !unicode.IsPrint(c) {
			return false
		}
	}
	return true
}

func (p *parser) parseMatch(r *rule, label string, n *yaml.Node) {
	fields, ok := p.mapping(n, label, "match")
	if !ok {
		return
	}
	if len(fields) == 0 && len(n.Content) == 0 {
		p.add(n.Line, label, "match", "must not be empty: a rule must match at least one claim")
		return
	}
	pinned := false
	for _, e := range fields {
		field := "match." + e.key
		spec, known := matchableClaim(e.key)
		if !known {
			p.add(e.line, label, field, "unknown claim (known: "+strings.Join(KnownClaims, ", ")+")")
			continue
		}
		items, ok := p.list(e.val, label, field)
		if !ok {
			continue
		}
		var globs []string
		allLiteralFirst := true
		for _, it := range items {
			if msg := checkMatchGlob(it.val, spec); msg != "" {
				p.add(it.line, label, field, msg)
				continue
			}
			if !firstSegmentLiteral(it.val) {
				allLiteralFirst = false
			}
			globs = append(globs, it.val)
		}
		if pinClaims[e.key] && allLiteralFirst && len(globs) == len(items) {
			pinned = true
		}
		r.match = append(r.match, newClaimMatch(e.key, e.line, globs))
	}
	if p.shared && !pinned {
		p.add(n.Line, label, "match", "on https://gitlab.com, which all tenants share, a rule must pin a namespace or project: "+
			"match project_path, namespace_path, project_id or namespace_id with patterns whose first segment is literal")
	}
}

// checkMatchGlob validates one match pattern against its claim's type.
func checkMatchGlob(g string, spec idclaims.Spec) string {
	if strings.Contains(g, "{{") {
		return "templates are only allowed in allow.projects and allow.groups"
	}
	if !doublestar.ValidatePattern(g) {
		return fmt.Sprintf("bad glob %q", g)
	}
	switch spec.Kind {
	case idclaims.Bool:
		if !matchGlob(g, "true") && !matchGlob(g, "false") {
			return fmt.Sprintf("%q can never match: the claim is \"true\" or \"false\" (quote it: \"true\")", g)
		}
	case idclaims.Enum:
		if !slices.ContainsFunc(spec.Values, func(v string) bool { return matchGlob(g, v) }) {
			return fmt.Sprintf("%q can never match: the claim is one of %s", g, strings.Join(spec.Values, ", "))
		}
	case idclaims.ID:
		if !hasMeta(g) {
			if _, err := strconv.ParseUint(g, 10, 64); err != nil {
				return fmt.Sprintf("%q can never match: the claim is a decimal number", g)
			}
		}
	case idclaims.Path:
		if strings.HasPrefix(g, "/") || strings.HasSuffix(g, "/") {
			return fmt.Sprintf("%q: a GitLab path has no leading or trailing slash", g)
		}
	}
	return ""
}

func (p *parser) parseAllow(r *rule, label string, n *yaml.Node) {
	fields, ok := p.mapping(n, label, "allow")
	if !ok {
		return
	}
	hasScopes := false
	ttlLine, accessLine := 0, 0
	var wide []item // targets whose first segment is a wildcard
	acknowledged := false
	for _, e := range fields {
		field := "allow." + e.key
		switch e.key {
		case "projects":
			r.projects = p.parseTargets(label, field, e.val)
			wide = append(wide, wildFirst(r.projects, e.line)...)
		case "groups":
			r.groups = p.parseTargets(label, field, e.val)
			wide = append(wide, wildFirst(r.groups, e.line)...)
		case "scopes":
			hasScopes = true
			items, ok := p.list(e.val, label, field)
			if !ok {
				continue
			}
			for _, it := range items {
				bit, known := scopeBit(it.val)
				if !known {
					p.add(it.line, label, field, fmt.Sprintf("unknown scope %q (known: %s)", it.val, strings.Join(scopeNames[:], ", ")))
					continue
				}
				if r.scopes&bit == 0 {
					r.scopeList = append(r.scopeList, it.val)
				}
				r.scopes |= bit
			}
		case "ttl":
			v, ok := p.scalar(e.val, label, field)
			if !ok {
				continue
			}
			d, err := time.ParseDuration(v)
			if err != nil {
				p.add(e.val.Line, label, field, fmt.Sprintf("bad duration %q (write e.g. 15m or 1h)", v))
				continue
			}
			if d <= 0 {
				p.add(e.val.Line, label, field, fmt.Sprintf("must be positive, not %q", v))
				continue
			}
			r.ttl = d
			r.ttlSet = true
			ttlLine = e.val.Line
		case "access_level":
			v, ok := p.scalar(e.val, label, field)
			if !ok {
				continue
			}
			lvl, known := AccessLevel(v)
			if !known {
				p.add(e.val.Line, label, field, fmt.Sprintf("unknown access level %q (want guest, reporter, developer, maintainer or 10, 20, 30, 40)", v))
				continue
			}
			r.accessLevel = lvl
			r.accessLevelSet = true
			accessLine = e.val.Line
		case AcknowledgeAPIMaintainerKey:
			if b, ok := p.boolean(e.val, label, field); ok {
				acknowledged = b
				r.acknowledged = b
			}
		default:
			p.add(e.line, label, field, "unknown key (want "+strings.Join(allowKeys, ", ")+")")
		}
	}
	if apiBit, _ := scopeBit("api"); r.scopes&apiBit != 0 && r.accessLevel >= AccessMaintainer && !acknowledged {
		line := accessLine
		if line == 0 {
			line = n.Line
		}
		p.add(line, label, "allow.access_level", "the api scope with the maintainer role can create deploy tokens and access tokens "+
			"the ledger never sees (a deploy token may never expire): lower the role, drop api, or set "+
			AcknowledgeAPIMaintainerKey+": true if that is what you mean")
	}
	if !hasScopes {
		p.add(n.Line, label, "allow.scopes", "missing: a rule must grant at least one scope")
	}
	if !hasField(fields, "projects") && !hasField(fields, "groups") {
		p.add(n.Line, label, "allow", "no projects and no groups: the rule allows nothing")
	}
	p.warnAllow(r, label, ttlLine, accessLine, wide)
}

// warnAllow reports what is legal but probably not what the author meant.
func (p *parser) warnAllow(r *rule, label string, ttlLine, accessLine int, wide []item) {
	if p.maxTTL > 0 && ttlLine > 0 && r.ttl > p.maxTTL {
		p.warn(ttlLine, label, "allow.ttl", fmt.Sprintf("%s is above max_ttl (%s): credentials get %s", shortDuration(r.ttl), shortDuration(p.maxTTL), shortDuration(p.maxTTL)))
	}
	if accessLine > 0 && !slices.ContainsFunc(r.scopeList, func(s string) bool { return !DeployTokenScope(s) }) {
		p.warn(accessLine, label, "allow.access_level", "has no effect: the rule's scopes are served by deploy tokens, which have no role "+
			"(access_level applies to write_repository, read_api and api)")
	}
	var writes []string
	for _, s := range r.scopeList {
		if writeScope(s) {
			writes = append(writes, s)
		}
	}
	if len(writes) > 0 {
		for _, t := range wide {
			p.warn(t.line, label, "allow", fmt.Sprintf("grants %s on %q, which matches projects in every top-level group; name the group",
				strings.Join(writes, ", "), t.val))
		}
	}
}

// shortDuration prints 24h rather than 24h0m0s.
func shortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// wildFirst returns the targets whose first path segment is a wildcard.
func wildFirst(ts []target, line int) []item {
	var out []item
	for _, t := range ts {
		first := t.raw
		if len(t.parts) > 0 {
			if t.parts[0].claim != "" {
				continue
			}
			first = t.parts[0].lit
		}
		if seg, _, _ := strings.Cut(first, "/"); seg == "" || hasMeta(seg) {
			out = append(out, item{val: t.raw, line: line})
		}
	}
	return out
}

func (p *parser) parseTargets(label, field string, n *yaml.Node) []target {
	items, ok := p.list(n, label, field)
	if !ok {
		return nil
	}
	out := make([]target, 0, len(items))
	for _, it := range items {
		t, msg := p.parseTarget(it.val)
		if msg != "" {
			p.add(it.line, label, field, msg)
			continue
		}
		out = append(out, t)
	}
	return out
}

func (p *parser) parseTarget(s string) (target, string) {
	parts, err := parseTemplate(s)
	if err != nil {
		return target{}, err.Error()
	}
	t := target{raw: s, parts: parts}
	g := placeholder(parts, s)
	if !doublestar.ValidatePattern(g) {
		return target{}, fmt.Sprintf("bad glob %q", s)
	}
	switch {
	case strings.HasPrefix(s, "/") || strings.HasSuffix(s, "/"):
		return target{}, fmt.Sprintf("%q: write a GitLab path without leading or trailing slash", s)
	case strings.HasSuffix(s, ".git"):
		return target{}, fmt.Sprintf("%q: write the project path without .git", s)
	case strings.Contains(s, "://"):
		return target{}, fmt.Sprintf("%q: write a path such as group/project, not a URL", s)
	}
	if p.shared && !targetFirstSegmentOK(&t) {
		return target{}, fmt.Sprintf("%q: on https://gitlab.com, which all tenants share, an entry must start with a literal top-level group "+
			"or with {{namespace_path}}/ or {{project_path}}, not a wildcard or another claim", s)
	}
	return t, ""
}
