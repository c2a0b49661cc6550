// Package idclaims is the catalogue of the claims GitLab puts in a CI/CD
// job's ID token, the one home of what each claim is: how it is encoded in
// the JSON payload (idtoken decodes by it) and what its value is (the policy
// checks match patterns and {{claim}} templates by it).
//
// Sources: GitLab's lib/gitlab/ci/jwt.rb, jwt_v2.rb and
// JSONWebToken::UserProjectTokenClaims, and the docs "OpenID Connect (OIDC)
// Authentication Using ID Tokens". The registered claims iss and sub are
// listed because a rule may match them; aud, exp, iat, nbf and jti are the
// verifier's business and are not.
package idclaims

import "sort"

// Encoding is how GitLab encodes a claim in the payload.
type Encoding int

const (
	String     Encoding = iota // a JSON string (GitLab sends ids as strings too)
	BoolString                 // the JSON string "true" or "false"
	Int                        // a JSON integer (runner_id)
	StringList                 // an array of strings (groups_direct)
	ObjectList                 // an array of objects (user_identities): not usable for matching
)

// Kind is what a claim's value is.
type Kind int

const (
	Text Kind = iota // free text; may contain '/'
	Path             // a GitLab full path: group/subgroup/project
	ID               // a decimal number
	Bool             // "true" or "false"
	Enum             // one of Spec.Values
)

// Spec describes one claim.
type Spec struct {
	Encoding Encoding
	Kind     Kind
	Values   []string // Kind Enum: the possible values
	// Matchable: a policy rule may match the claim and use it in {{claim}}
	// templates. Lists are not (their string form would be ambiguous), nor
	// target_audience.
	Matchable bool
}

var (
	text  = Spec{Encoding: String, Kind: Text, Matchable: true}
	path  = Spec{Encoding: String, Kind: Path, Matchable: true}
	id    = Spec{Encoding: String, Kind: ID, Matchable: true}
	flag  = Spec{Encoding: BoolString, Kind: Bool, Matchable: true}
	enum  = func(v ...string) Spec { return Spec{Encoding: String, Kind: Enum, Values: v, Matchable: true} }
	catal = map[string]Spec{
		"iss":                   text,
		"sub":                   text, // project_path:{g}/{p}:ref_type:{t}:ref:{r} by default; projects can customise it
		"namespace_id":          id,
		"namespace_path":        path,
		"project_id":            id,
		"project_path":          path,
		"job_project_id":        id,   // the project the job runs in (differs from project_* for fork MRs)
		"job_project_path":      path, // GitLab 18.4+
		"job_namespace_id":      id,
		"job_namespace_path":    path,
		"user_id":               id,
		"user_login":            text,
		"user_email":            text,
		"user_access_level":     text,
		"pipeline_id":           id,
		"pipeline_source":       text,
		"job_id":                id,
		"ref":                   text, // branch or tag name, no refs/heads/ prefix; may contain '/'
		"ref_type":              enum("branch", "tag"),
		"ref_path":              text, // refs/heads/main, refs/tags/v1
		"ref_protected":         flag,
		"environment":           text,
		"environment_protected": flag,
		"deployment_tier":       enum("production", "staging", "testing", "development", "other"),
		"environment_action":    text,
		"runner_id":             {Encoding: Int, Kind: ID, Matchable: true},
		"runner_environment":    enum("gitlab-hosted", "self-hosted"),
		"sha":                   text,
		"project_visibility":    enum("public", "internal", "private"),
		"ci_config_ref_uri":     text,
		"ci_config_sha":         text,
		"target_audience":       {Encoding: String, Kind: Text},
		"groups_direct":         {Encoding: StringList, Kind: Text},
		"user_identities":       {Encoding: ObjectList, Kind: Text},
	}
)

// Lookup returns the spec of the claim named name, or false for a claim
// GitLab does not document.
func Lookup(name string) (Spec, bool) {
	s, ok := catal[name]
	return s, ok
}

// Matchable lists, sorted, the claims a policy rule may use.
func Matchable() []string {
	var out []string
	for name, s := range catal {
		if s.Matchable {
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out
}
