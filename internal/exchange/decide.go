package exchange

import (
	"fmt"
	"slices"
	"time"

	"gltoken.dev/gltoken/internal/ledger"
	"gltoken.dev/gltoken/internal/policy"
)

// plan is what the service mints for an allowed request.
type plan struct {
	kind  ledger.Kind
	owner string // full path of the project or group the credential lives on
	// lifetime is min(the rule's ttl, max_ttl); the ID token's remaining
	// life caps it further at exchange time.
	lifetime time.Duration
	role     int // access level of an access token; 0 for deploy tokens
	rule     string
	ruleFP   string // the rule's content fingerprint (Decision.RuleFingerprint)
	scopes   []string
}

// decide asks the policy whether claims may have scopes on t and, if so,
// plans the least-privileged credential: its kind and owner, its lifetime
// under maxTTL and its role. It is pure: Exchange and Explain both call it,
// so what explain shows is what an exchange does. The decision comes back
// either way (its trace and rule); a denial is an *Error.
func decide(pol *policy.Policy, maxTTL time.Duration, claims map[string]string, t target, scopes []string) (plan, policy.Decision, error) {
	dec := pol.Evaluate(policy.Request{Claims: claims, Project: t.project, Scopes: scopes})
	if !dec.Allowed {
		code := CodeInvalidTarget
		if dec.ScopeDenied {
			code = CodeInvalidScope
		}
		return plan{}, dec, &Error{Code: code, Description: "denied by policy: " + dec.Reason}
	}
	kind, owner := leastPrivilege(scopes, t.project, dec.Group)
	p := plan{kind: kind, owner: owner, lifetime: min(dec.TTL, maxTTL), rule: dec.Rule, ruleFP: dec.RuleFingerprint, scopes: scopes}
	if kind.AccessToken() {
		p.role = dec.AccessLevel
		if p.role == 0 {
			p.role = policy.AccessDeveloper // GitLab's own default would be maintainer
		}
	}
	return p, dec, nil
}

// leastPrivilege applies the least-privilege table: deploy tokens for
// everything they can do, a group deploy token when the rule serves the
// project through a group, a project access token only for push or API
// access.
func leastPrivilege(scopes []string, project, group string) (ledger.Kind, string) {
	for _, sc := range scopes {
		if !policy.DeployTokenScope(sc) {
			return ledger.ProjectAccessToken, project
		}
	}
	if group != "" {
		return ledger.GroupDeployToken, group
	}
	return ledger.ProjectDeployToken, project
}

// checkScopes returns the requested scopes deduplicated and sorted, or why
// they cannot be asked for on this kind of resource.
func checkScopes(requested []string, registry bool) ([]string, error) {
	if len(requested) == 0 {
		return nil, &Error{Code: CodeInvalidScope, Description: "no scope requested"}
	}
	out := make([]string, 0, len(requested))
	for _, sc := range requested {
		if !policy.KnownScope(sc) {
			return nil, &Error{Code: CodeInvalidScope, Description: fmt.Sprintf("unknown scope %q", truncate(sc, 64))}
		}
		if registry && !policy.RegistryScope(sc) {
			return nil, &Error{Code: CodeInvalidScope, Description: fmt.Sprintf("scope %q does not apply to a registry resource (read_registry, write_registry)", sc)}
		}
		if !slices.Contains(out, sc) {
			out = append(out, sc)
		}
	}
	slices.Sort(out)
	return out, nil
}
