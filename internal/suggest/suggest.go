// Package suggest proposes least-privilege policy rules from what the ledger
// shows each rule actually handed out: the source projects that used it, the
// targets, the scopes, and how long jobs held the credentials. An Analysis
// is fed ledger records one at a time (Add), so a caller can page through a
// large ledger, and Report turns the totals into per-rule use and, for each
// rule that allows more than was used, a narrower copy of it as policy YAML
// in mode shadow. A suggested rule is never wider than the rule it narrows:
// every target it names was allowed by an untemplated entry of the original,
// templated entries are kept as written, scopes and ttl only shrink, and
// match keys are only narrowed.
package suggest

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"

	"gltoken.dev/gltoken/internal/ledger"
	"gltoken.dev/gltoken/internal/policy"
)

// MinTTL is the shortest ttl a suggestion proposes.
const MinTTL = 5 * time.Minute

// Options say which window is judged and how the suggested YAML is checked.
type Options struct {
	Since, Until time.Time
	// Policy are the load options of the configured policy (gitlab.url,
	// max_ttl): the suggested rules must load under them.
	Policy policy.Options
}

// Analysis collects the use of each rule; feed it with Add, then Report.
type Analysis struct {
	pol   *policy.Policy
	opts  Options
	rules map[string]*use
	seen  int
}

type use struct {
	mints, abandoned, handedOut int
	kinds                       map[ledger.Kind]int
	jobs                        map[string]bool
	sources                     map[string]*sourceUse
	rawSubjects                 bool // a subject that is not project_path:…: no match narrowing
	targets                     map[targetKey]int
	scopes                      map[string]bool
	lifetimeMax                 time.Duration
	holds, released, toEnd      int
	holdMax                     time.Duration
}

type sourceUse struct {
	credentials int
	refs        map[string]bool
}

type targetKey struct {
	path string
	kind ledger.Kind
}

// New starts an analysis of pol over opts' window.
func New(pol *policy.Policy, opts Options) *Analysis {
	return &Analysis{pol: pol, opts: opts, rules: map[string]*use{}}
}

func (a *Analysis) rule(name string) *use {
	u := a.rules[name]
	if u == nil {
		u = &use{kinds: map[ledger.Kind]int{}, jobs: map[string]bool{}, sources: map[string]*sourceUse{},
			targets: map[targetKey]int{}, scopes: map[string]bool{}}
		a.rules[name] = u
	}
	return u
}

// Add counts one ledger record and its holders. A record created in the
// window counts as a mint; one created before it (a pool slot, which lives
// across rotations) counts only through its holds taken in the window.
func (a *Analysis) Add(rec ledger.Record, holders []ledger.Holder) {
	minted := !rec.CreatedAt.Before(a.opts.Since) && !rec.CreatedAt.After(a.opts.Until)
	var inWindow []ledger.Holder
	for _, h := range holders {
		if !h.HeldSince.Before(a.opts.Since) && !h.HeldSince.After(a.opts.Until) {
			inWindow = append(inWindow, h)
		}
	}
	if !minted && len(inWindow) == 0 {
		return
	}
	a.seen++
	u := a.rule(rec.Rule)
	if minted {
		u.mints++
		if rec.State == ledger.Abandoned {
			u.abandoned++
		}
	}
	u.handedOut += len(inWindow)
	u.kinds[rec.Kind]++
	u.targets[targetKey{rec.OwnerPath, rec.Kind}]++
	for _, s := range rec.Scopes {
		u.scopes[s] = true
	}
	if project, ref, ok := parseSubject(rec.Subject); ok {
		s := u.sources[project]
		if s == nil {
			s = &sourceUse{refs: map[string]bool{}}
			u.sources[project] = s
		}
		s.credentials++
		if ref != "" {
			s.refs[ref] = true
		}
	} else if rec.Subject != "" {
		u.rawSubjects = true
	}
	if len(inWindow) == 0 && rec.JobID != "" && minted {
		u.jobs[rec.JobID] = true
	}
	if rec.State != ledger.Abandoned && !rec.ExpiresAt.IsZero() && !ledger.IsSlotID(rec.ID) {
		u.lifetimeMax = max(u.lifetimeMax, rec.ExpiresAt.Sub(rec.CreatedAt))
	}
	for _, h := range inWindow {
		u.jobs[h.JobID] = true
		a.hold(u, rec, h)
	}
}

// hold counts how long one job held the credential. A hold counts up to the
// credential's expiry: a job that held it that long needed all of its ttl
// (or got a new one). A hold never let go on a credential that is over was
// one the job watch stopped watching when the credential ended, so the job
// outlived it: that too counts as held to the end.
func (a *Analysis) hold(u *use, rec ledger.Record, h ledger.Holder) {
	u.holds++
	end := rec.ExpiresAt
	if ledger.IsSlotID(rec.ID) || end.IsZero() {
		// A slot's ExpiresAt follows its rotations; the rule's ttl bounds the hold.
		end = h.HeldSince.Add(a.ruleTTL(rec.Rule))
	}
	switch {
	case !h.Holding():
		u.released++
		if !h.ReleasedAt.Before(end) {
			u.toEnd++
			u.holdMax = max(u.holdMax, end.Sub(h.HeldSince))
			return
		}
		u.holdMax = max(u.holdMax, h.ReleasedAt.Sub(h.HeldSince))
	case rec.State == ledger.Active || rec.State == ledger.Pending:
		if !a.opts.Until.Before(end) {
			u.toEnd++
			u.holdMax = max(u.holdMax, end.Sub(h.HeldSince))
			return
		}
		// Still running: held at least this long.
		u.holdMax = max(u.holdMax, a.opts.Until.Sub(h.HeldSince))
	default:
		if rec.State == ledger.Revoked && !rec.RevokedAt.IsZero() && rec.RevokedAt.Before(end) {
			// Revoked early (by its client or an operator): held at least until then.
			u.holdMax = max(u.holdMax, rec.RevokedAt.Sub(h.HeldSince))
			return
		}
		u.toEnd++
		u.holdMax = max(u.holdMax, end.Sub(h.HeldSince))
	}
}

func (a *Analysis) ruleTTL(name string) time.Duration {
	if s, ok := a.pol.Spec(name); ok {
		return s.TTL
	}
	return policy.DefaultTTL
}

// parseSubject splits GitLab's sub claim of a CI job,
// project_path:GROUP/PROJECT:ref_type:TYPE:ref:REF, into the project path
// and "TYPE:REF".
func parseSubject(sub string) (project, ref string, ok bool) {
	rest, found := strings.CutPrefix(sub, "project_path:")
	if !found {
		return "", "", false
	}
	project, rest, found = strings.Cut(rest, ":ref_type:")
	if !found {
		return project, "", project != ""
	}
	typ, r, found := strings.Cut(rest, ":ref:")
	if !found {
		return project, "", project != ""
	}
	return project, typ + ":" + r, project != ""
}

// sortedKeys returns the keys of m, sorted.
func sortedKeys[K cmp.Ordered, V any](m map[K]V) []K {
	out := make([]K, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// roundTTL rounds d up to 5 minutes below an hour and to 15 minutes above,
// and to at least MinTTL.
func roundTTL(d time.Duration) time.Duration {
	step := 5 * time.Minute
	if d > time.Hour {
		step = 15 * time.Minute
	}
	r := (d + step - 1) / step * step
	return max(r, MinTTL)
}

// shortDuration prints 1h30m rather than 1h30m0s.
func shortDuration(d time.Duration) string {
	s := d.Round(time.Second).String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

func plural(n int, word string) string {
	if n == 1 {
		return fmt.Sprintf("%d %s", n, word)
	}
	return fmt.Sprintf("%d %ss", n, word)
}
