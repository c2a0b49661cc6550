package suggest

import (
	"fmt"
	"sort"
	"strings"
	"time"
)

// Text renders the report for people as a policy file: the use of each rule
// as YAML comments, then the suggested rules. The whole output loads as a
// policy (exchanged check --project-policy), so the rules can be pasted, as
// they stand, next to the rules they narrow.
func (r *Report) Text() string {
	var b strings.Builder
	line := func(format string, args ...any) { b.WriteString("# " + fmt.Sprintf(format, args...) + "\n") }
	span := r.Until.Sub(r.Since).Round(time.Second)
	line("exchanged suggest: what each rule minted and handed out from %s to %s (%s)",
		r.Since.Format(time.RFC3339), r.Until.Format(time.RFC3339), shortDuration(span))
	if r.Credentials == 0 {
		line("no credential was minted or handed out in the window: nothing to suggest")
		b.WriteString("rules: []\n")
		return b.String()
	}
	line("%s in the window", plural(r.Credentials, "credential"))
	for _, rr := range r.Rules {
		b.WriteString("#\n")
		mode := rr.Mode
		if !rr.InPolicy {
			mode = "not in the policy"
		}
		line("rule %s (%s): %d minted (%d abandoned), %d handed out, %s", rr.Rule, mode, rr.Minted, rr.Abandoned, rr.HandedOut, plural(rr.Jobs, "job"))
		if len(rr.Kinds) > 0 {
			var ks []string
			for k, n := range rr.Kinds {
				ks = append(ks, fmt.Sprintf("%s %d", k, n))
			}
			sort.Strings(ks)
			line("  kinds:   %s", strings.Join(ks, ", "))
		}
		if len(rr.Sources) > 0 {
			var ss []string
			for _, s := range rr.Sources {
				ss = append(ss, fmt.Sprintf("%s %d (%s)", s.Project, s.Credentials, strings.Join(s.Refs, " ")))
			}
			line("  sources: %s", strings.Join(ss, ", "))
		}
		if len(rr.Targets) > 0 {
			var ts []string
			for _, t := range rr.Targets {
				ts = append(ts, fmt.Sprintf("%s %s %d", t.Path, t.Kind, t.Credentials))
			}
			line("  targets: %s", strings.Join(ts, ", "))
		}
		if rr.InPolicy {
			used := strings.Join(rr.ScopesUsed, ", ")
			if used == "" {
				used = "none"
			}
			if len(rr.ScopesUnused) > 0 {
				used += " (never used: " + strings.Join(rr.ScopesUnused, ", ") + ")"
			}
			line("  scopes:  %s", used)
			ttl := shortDuration(time.Duration(rr.TTLSeconds) * time.Second)
			if rr.LifetimeMaxSeconds > 0 {
				ttl += "; credentials lived up to " + shortDuration(time.Duration(rr.LifetimeMaxSeconds)*time.Second)
			}
			if rr.Holds.Count > 0 {
				ttl += fmt.Sprintf("; %d of %s let go, held up to %s, %d to the credential's end",
					rr.Holds.Released, plural(rr.Holds.Count, "hold"), shortDuration(time.Duration(rr.Holds.MaxSeconds)*time.Second), rr.Holds.HeldToEnd)
			}
			line("  ttl:     %s", ttl)
			line("  access_level: %s", rr.AccessLevel)
		}
		s := rr.Suggestion
		switch s.Action {
		case ActionNarrow:
			line("  suggest: narrow, as rule %s below:", s.Name)
		case ActionRemove:
			line("  suggest: remove the rule")
		case ActionKeep:
			line("  suggest: keep (as narrow as its use shows)")
		default:
			line("  suggest: nothing")
		}
		for _, c := range s.Changes {
			line("    - %s", c)
		}
		for _, n := range s.Notes {
			line("    note: %s", n)
		}
	}
	b.WriteString("#\n")
	line("Paste the rules below next to the rules they narrow; in mode shadow they decide nothing. Watch the")
	line("audit log's shadow verdicts (would deny) for a while, then set mode: enforce and remove the old rule.")
	b.WriteString(r.SuggestedPolicy)
	return b.String()
}
