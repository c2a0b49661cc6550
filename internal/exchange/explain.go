package exchange

import (
	"fmt"
	"slices"
	"strings"

	"gltoken.dev/gltoken/internal/policy"
)

// Explain renders the decision the service would take for claims, the
// resources (one, or several registry repositories for one credential) and
// scopes, without verifying a token or minting anything: the resource
// parsing, scope checks, policy trace and plan (decide, decideAll) of a real
// exchange, one block per resource. allowed reports the outcome.
func Explain(cfg Config, pol *policy.Policy, claims map[string]string, resources []string, scopes []string) (out string, allowed bool, err error) {
	o, err := newOrigins(cfg.GitLabURL, cfg.RegistryURL)
	if err != nil {
		return "", false, err
	}
	cfg = cfg.withDefaults()
	var b strings.Builder
	targets, err := o.parseAll(resources)
	if err != nil {
		fmt.Fprintf(&b, "resource:  %s\n", strings.Join(resources, " "))
		fmt.Fprintf(&b, "decision:  DENY (%v)\n", err)
		return b.String(), false, nil
	}
	allowed = true
	var seen []target
	for _, raw := range resources {
		t, _ := o.parse(raw) // parseAll accepted it
		if slices.Contains(seen, t) {
			continue
		}
		if len(seen) > 0 {
			b.WriteString("\n")
		}
		seen = append(seen, t)
		if !explainOne(&b, cfg, pol, claims, raw, t, scopes) {
			allowed = false
		}
	}
	if len(targets) == 1 || !allowed {
		return b.String(), allowed, nil
	}
	sc, _ := checkScopes(scopes, true)
	p, _, denied := decideAll(pol, cfg.MaxTTL, claims, targets, sc)
	if denied != nil {
		fmt.Fprintf(&b, "\ntogether:  DENY (%v)\n", denied)
		return b.String(), false, nil
	}
	fmt.Fprintf(&b, "\ntogether:  ALLOW: one %s on %s serves all %d\n", p.kind, p.owner, len(targets))
	return b.String(), true, nil
}

// explainOne writes the block of one target and reports whether it is allowed.
func explainOne(b *strings.Builder, cfg Config, pol *policy.Policy, claims map[string]string, resource string, t target, scopes []string) bool {
	fmt.Fprintf(b, "resource:  %s\n", resource)
	kindOfTarget := "repository"
	if t.registry {
		kindOfTarget = "registry repository"
	}
	fmt.Fprintf(b, "target:    %s %s\n", kindOfTarget, t.project)
	sc, err := checkScopes(scopes, t.registry)
	if err != nil {
		fmt.Fprintf(b, "decision:  DENY (%v)\n", err)
		return false
	}
	fmt.Fprintf(b, "scopes:    %s\n", strings.Join(sc, " "))
	if sub := claims["sub"]; sub != "" {
		fmt.Fprintf(b, "subject:   %s\n", sub)
	}
	p, dec, denied := decide(pol, cfg.MaxTTL, claims, t, sc)
	b.WriteString("rules:\n")
	if len(dec.Trace) == 0 {
		b.WriteString("  (the policy has no rules)\n")
	}
	for _, st := range dec.Trace {
		if st.Shadow {
			if st.Matched {
				fmt.Fprintf(b, "  %-28s shadow: would allow\n", st.Rule)
			} else {
				fmt.Fprintf(b, "  %-28s shadow: would deny: %s\n", st.Rule, st.Failed)
			}
			continue
		}
		if st.Matched {
			fmt.Fprintf(b, "  %-28s MATCH\n", st.Rule)
			continue
		}
		fmt.Fprintf(b, "  %-28s no: %s\n", st.Rule, st.Failed)
	}
	if denied != nil {
		fmt.Fprintf(b, "decision:  DENY: %s\n", dec.Reason)
		return false
	}
	fmt.Fprintf(b, "decision:  ALLOW by rule %q\n", p.rule)
	fmt.Fprintf(b, "mint:      %s on %s, lifetime min(rule %s, max_ttl %s, the ID token's remaining life)", p.kind, p.owner, dec.TTL, cfg.MaxTTL)
	if p.lifetime < dec.TTL {
		fmt.Fprintf(b, " = at most %s", p.lifetime)
	}
	b.WriteString("\n")
	if p.kind.AccessToken() {
		fmt.Fprintf(b, "role:      access level %d\n", p.role)
		if p.role < 40 && slices.Contains(p.scopes, "write_repository") {
			fmt.Fprintf(b, "note:      access level %d is below maintainer: GitLab refuses its pushes to protected branches\n"+
				"           (the default branch is protected, maintainers only, by default); to push there, grant\n"+
				"           access_level: maintainer in rule %q\n", p.role, p.rule)
		}
	}
	return true
}
