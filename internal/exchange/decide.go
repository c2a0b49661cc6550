package exchange

import (
	"errors"
	"fmt"
	"slices"
	"strings"
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
		return plan{}, dec, &Error{Code: code, Description: "denied by policy: " + dec.Reason, denied: true}
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

// decideAll is decide for a request naming several targets, one credential
// for all of them (RFC 8693 allows several resource parameters; a registry
// login names one registry host, so a job that pulls images of several
// projects asks for them together). Every target must be allowed on its own,
// and every one must come to the same plan: the same rule, kind and owner.
// That is only ever one group deploy token, of a group a rule lists in
// allow.groups that holds every project: deploy and access tokens live on one
// project or one group, and nothing is widened to make them fit. The
// decision returned is the first target's, with the shadow verdicts of all.
func decideAll(pol *policy.Policy, maxTTL time.Duration, claims map[string]string, ts []target, scopes []string) (plan, policy.Decision, error) {
	first, firstDec, err := decide(pol, maxTTL, claims, ts[0], scopes)
	if len(ts) == 1 {
		return first, firstDec, err
	}
	if err != nil {
		return plan{}, firstDec, forTarget(err, ts[0])
	}
	var shadows [][]policy.ShadowResult
	shadows = append(shadows, firstDec.Shadow)
	for _, t := range ts[1:] {
		p, dec, err := decide(pol, maxTTL, claims, t, scopes)
		shadows = append(shadows, dec.Shadow)
		if err != nil {
			firstDec.Shadow = mergeShadow(shadows)
			return plan{}, firstDec, forTarget(err, t)
		}
		if p.rule != first.rule || p.ruleFP != first.ruleFP || p.kind != first.kind || p.owner != first.owner || p.role != first.role {
			firstDec.Shadow = mergeShadow(shadows)
			return plan{}, firstDec, &Error{Code: CodeInvalidTarget, Description: fmt.Sprintf(
				"one credential cannot serve both %s and %s: the first would get a %s on %s (rule %q), the second a %s on %s (rule %q); "+
					"one registry login serves several projects only as one group deploy token, "+
					"of a group that one rule lists in allow.groups and that holds them all",
				ts[0].project, t.project, first.kind, first.owner, first.rule, p.kind, p.owner, p.rule)}
		}
	}
	firstDec.Shadow = mergeShadow(shadows)
	return first, firstDec, nil
}

// forTarget names the target a denial of a several-target request is about.
func forTarget(err error, t target) error {
	var e *Error
	if errors.As(err, &e) {
		e.Description = strings.Replace(e.Description, "denied by policy: ", "denied by policy for "+t.project+": ", 1)
	}
	return err
}

// mergeShadow combines the shadow verdicts of several targets: a shadow rule
// would allow the request only if it would allow every target, and a denial
// names the first target's failed check.
func mergeShadow(per [][]policy.ShadowResult) []policy.ShadowResult {
	var out []policy.ShadowResult
	at := map[string]int{}
	for _, rs := range per {
		for _, r := range rs {
			i, seen := at[r.Rule]
			if !seen {
				at[r.Rule] = len(out)
				out = append(out, r)
				continue
			}
			if out[i].WouldAllow && !r.WouldAllow {
				out[i] = r
			}
		}
	}
	return out
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
