package policy

import (
	"slices"
	"strconv"
	"strings"

	"gltoken.dev/gltoken/internal/idclaims"
)

// matchableClaim returns the spec of a claim a rule may match and use in
// {{claim}} templates. The catalogue (idclaims) is shared with the ID-token
// decoder; the spec's Kind lets Parse reject a match pattern that no real
// token could ever satisfy (`ref_protected: yes`, `ref_type: branches`,
// `project_id: abc`).
func matchableClaim(name string) (idclaims.Spec, bool) {
	s, ok := idclaims.Lookup(name)
	return s, ok && s.Matchable
}

// KnownClaims lists, sorted, the ID-token claims a rule may use in match and
// in {{claim}} templates.
var KnownClaims = idclaims.Matchable()

// pinClaims are the claims that, on https://gitlab.com, pin a rule to one
// tenant's namespace or project.
var pinClaims = map[string]bool{
	"project_path": true, "namespace_path": true, "project_id": true, "namespace_id": true,
}

// tenantTemplateClaims are the claims a gitlab.com rule may use as the first
// segment of an allow.projects/allow.groups entry: their value starts with
// the job's own top-level namespace. Any other claim (ref, environment…) is
// chosen by whoever runs the pipeline and could name another tenant.
var tenantTemplateClaims = map[string]bool{
	"namespace_path": true, "project_path": true, "job_namespace_path": true, "job_project_path": true,
}

// KnownScopes lists the scopes a rule may grant: the project deploy-token
// scopes (read_repository, read_registry, write_registry,
// read_package_registry, write_package_registry), which are minted as deploy
// tokens, and write_repository, read_api and api, which need a project access
// token. GitLab's read_virtual_registry/write_virtual_registry exist only for
// group deploy tokens (GitLab hides them for project tokens) and are not
// offered.
var KnownScopes = slices.Clone(scopeNames[:])

// scopes is the scope catalogue, the one home of what each scope is: whether
// a deploy token carries it (else it needs a project access token), whether
// it changes things or reaches the whole API, whether it applies to a
// container registry repository.
var scopes = [...]struct {
	name                    string
	deploy, write, registry bool
}{
	{name: "read_repository", deploy: true},
	{name: "read_registry", deploy: true, registry: true},
	{name: "write_registry", deploy: true, write: true, registry: true},
	{name: "read_package_registry", deploy: true},
	{name: "write_package_registry", deploy: true, write: true},
	{name: "write_repository", write: true},
	{name: "read_api"},
	{name: "api", write: true},
}

// scopeNames is the package's own copy of the names: a caller changing
// KnownScopes must not change what a policy grants.
var scopeNames = func() (n [len(scopes)]string) {
	for i, s := range scopes {
		n[i] = s.name
	}
	return n
}()

// KnownScope reports whether a rule may grant scope s.
func KnownScope(s string) bool { _, ok := scopeBit(s); return ok }

// DeployTokenScope reports whether a deploy token carries scope s; a known
// scope that is not one needs a project access token.
func DeployTokenScope(s string) bool {
	return scopeHas(s, func(i int) bool { return scopes[i].deploy })
}

// RegistryScope reports whether scope s applies to a container registry
// repository (read_registry, write_registry).
func RegistryScope(s string) bool { return scopeHas(s, func(i int) bool { return scopes[i].registry }) }

// writeScope reports whether s changes things or reaches the whole API.
func writeScope(s string) bool { return scopeHas(s, func(i int) bool { return scopes[i].write }) }

func scopeHas(s string, f func(i int) bool) bool {
	for i := range scopes {
		if scopes[i].name == s {
			return f(i)
		}
	}
	return false
}

// scopeSet is a bit set over scopeNames.
type scopeSet uint32

func scopeBit(name string) (scopeSet, bool) {
	for i, s := range scopeNames {
		if s == name {
			return 1 << uint(i), true
		}
	}
	return 0, false
}

// Access levels are GitLab's role numbers.
const (
	AccessGuest      = 10
	AccessReporter   = 20
	AccessDeveloper  = 30
	AccessMaintainer = 40
)

var accessLevels = map[string]int{
	"guest": AccessGuest, "reporter": AccessReporter, "developer": AccessDeveloper, "maintainer": AccessMaintainer,
}

// AccessLevel maps a role name (guest, reporter, developer, maintainer) or its
// number ("10", "20", "30", "40") to GitLab's access level.
func AccessLevel(name string) (int, bool) {
	name = strings.TrimSpace(name)
	if n, ok := accessLevels[strings.ToLower(name)]; ok {
		return n, true
	}
	n, err := strconv.Atoi(name)
	if err != nil {
		return 0, false
	}
	for _, v := range accessLevels {
		if v == n {
			return n, true
		}
	}
	return 0, false
}
