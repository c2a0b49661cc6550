package exchange

import (
	"fmt"
	"strings"

	"gltoken.dev/gltoken/internal/policy"
)

// Explain renders the decision the service would take for claims, a
// resource and scopes, without verifying a token or minting anything: the
// resource parsing, scope checks, policy trace and least-privilege choice of
// a real exchange. allowed reports the outcome.
func Explain(cfg Config, pol *policy.Policy, claims map[string]string, resource string, scopes []string) (out string, allowed bool, err error) {
	s, err := New(cfg, nil, func() *policy.Policy { return pol }, nil, nil)
	if err != nil {
		return "", false, err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "resource:  %s\n", resource)
	t, err := s.parseResource(resource)
	if err != nil {
		fmt.Fprintf(&b, "decision:  DENY (%v)\n", err)
		return b.String(), false, nil
	}
	kindOfTarget := "repository"
	if t.registry {
		kindOfTarget = "registry repository"
	}
	fmt.Fprintf(&b, "target:    %s %s\n", kindOfTarget, t.project)
	sc, err := checkScopes(scopes, t.registry)
	if err != nil {
		fmt.Fprintf(&b, "decision:  DENY (%v)\n", err)
		return b.String(), false, nil
	}
	fmt.Fprintf(&b, "scopes:    %s\n", strings.Join(sc, " "))
	if sub := claims["sub"]; sub != "" {
		fmt.Fprintf(&b, "subject:   %s\n", sub)
	}
	dec := pol.Evaluate(policy.Request{Claims: claims, Project: t.project, Scopes: sc})
	b.WriteString("rules:\n")
	if len(dec.Trace) == 0 {
		b.WriteString("  (the policy has no rules)\n")
	}
	for _, st := range dec.Trace {
		if st.Matched {
			fmt.Fprintf(&b, "  %-28s MATCH\n", st.Rule)
			continue
		}
		fmt.Fprintf(&b, "  %-28s no: %s\n", st.Rule, st.Failed)
	}
	if !dec.Allowed {
		fmt.Fprintf(&b, "decision:  DENY: %s\n", dec.Reason)
		return b.String(), false, nil
	}
	kind, owner := leastPrivilege(sc, t.project, dec.Group)
	ttl := min(dec.TTL, s.cfg.MaxTTL)
	fmt.Fprintf(&b, "decision:  ALLOW by rule %q\n", dec.Rule)
	fmt.Fprintf(&b, "mint:      %s on %s, lifetime min(rule %s, max_ttl %s, the ID token's remaining life)", kind, owner, dec.TTL, s.cfg.MaxTTL)
	if ttl < dec.TTL {
		fmt.Fprintf(&b, " = at most %s", ttl)
	}
	b.WriteString("\n")
	if dec.AccessLevel != 0 && (kind != "project_deploy_token" && kind != "group_deploy_token") {
		fmt.Fprintf(&b, "role:      access level %d\n", dec.AccessLevel)
	}
	return b.String(), true, nil
}
