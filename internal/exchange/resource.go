package exchange

import (
	"fmt"
	"net/url"
	"slices"
	"strings"

	"gltoken.dev/gltoken/internal/gitlabpath"
)

// origins are what the daemon serves: the GitLab instance (its resources
// are repositories) and, optionally, its container registry (registry
// repositories). parse reduces a resource URL to a target.
type origins struct {
	gitlab   *url.URL
	registry *url.URL // nil when no registry is served
}

func newOrigins(gitlabURL, registryURL string) (origins, error) {
	var o origins
	var err error
	if o.gitlab, err = parseBaseURL(gitlabURL); err != nil {
		return origins{}, fmt.Errorf("gitlab url: %w", err)
	}
	if registryURL != "" {
		if o.registry, err = parseBaseURL(registryURL); err != nil {
			return origins{}, fmt.Errorf("registry url: %w", err)
		}
	}
	return o, nil
}

func parseBaseURL(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, err
	}
	if (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return nil, fmt.Errorf("%q is not an absolute http(s) URL", raw)
	}
	return u, nil
}

// target is a resource reduced to what the policy and the minter need.
type target struct {
	project  string // full path, e.g. "platform/libs/core"
	registry bool   // a container registry repository rather than a git one
}

// parse accepts "https://gitlab.example.com/group/proj(.git)" for a
// repository and "https://registry.example.com/group/proj" for a registry
// repository. Anything else is invalid_target.
func (o origins) parse(raw string) (target, error) {
	bad := func(format string, args ...any) (target, error) {
		return target{}, &Error{Code: CodeInvalidTarget, Description: fmt.Sprintf(format, args...)}
	}
	if raw == "" {
		return target{}, &Error{Code: CodeInvalidRequest, Description: fmt.Sprintf("resource is required: the URL of the repository, e.g. %s/group/project.git", o.gitlab)}
	}
	if len(raw) > gitlabpath.MaxLen+256 {
		return bad("resource is too long")
	}
	u, err := url.Parse(raw)
	if err != nil || !u.IsAbs() || u.Host == "" || u.Opaque != "" {
		return bad("resource is not an absolute URL (e.g. %s/group/project.git)", o.gitlab)
	}
	if u.User != nil || u.RawQuery != "" || u.Fragment != "" || u.ForceQuery {
		return bad("resource must not carry credentials, a query or a fragment")
	}
	base, registry := o.gitlab, false
	switch {
	case sameOrigin(u, o.gitlab):
	case o.registry != nil && sameOrigin(u, o.registry):
		base, registry = o.registry, true
	default:
		if o.registry != nil {
			return bad("resource %s://%s is not served here: this daemon serves %s and the registry %s", u.Scheme, u.Host, o.gitlab.Redacted(), o.registry.Redacted())
		}
		return bad("resource %s://%s is not served here: this daemon serves %s", u.Scheme, u.Host, o.gitlab.Redacted())
	}
	if u.RawPath != "" {
		return bad("resource path must not be percent-encoded")
	}
	p := u.Path
	if prefix := strings.TrimSuffix(base.Path, "/"); prefix != "" {
		if !strings.HasPrefix(p, prefix+"/") {
			return bad("resource path is not under %s", base.Redacted())
		}
		p = p[len(prefix):]
	}
	p = strings.TrimPrefix(p, "/")
	p = strings.TrimSuffix(p, "/")
	if !registry {
		p = strings.TrimSuffix(p, ".git")
	}
	if err := gitlabpath.CheckProject(p); err != nil {
		return bad("resource %v", err)
	}
	return target{project: p, registry: registry}, nil
}

// MaxResources bounds the resources of one request.
const MaxResources = 20

// parseAll parses the resources of one request. Several resources ask for one
// credential valid at each of them (RFC 8693, section 2.1): that is for
// registry logins only, which name a registry host and never the image. A
// git request names its one repository. Repeated targets count once.
func (o origins) parseAll(raws []string) ([]target, error) {
	switch {
	case len(raws) == 0:
		_, err := o.parse("")
		return nil, err
	case len(raws) > MaxResources:
		return nil, &Error{Code: CodeInvalidRequest, Description: fmt.Sprintf("at most %d resources in one request", MaxResources)}
	}
	var out []target
	for _, raw := range raws {
		t, err := o.parse(raw)
		if err != nil {
			return nil, err
		}
		if len(raws) > 1 && !t.registry {
			// RFC 6749's "at most once" holds for git: a repeated resource
			// there is a malformed request, as every repeated parameter is.
			return nil, &Error{Code: CodeInvalidRequest, Description: fmt.Sprintf(
				"parameter \"resource\" given more than once: several resources in one request are for registry logins only (%s is a git repository): ask for one repository at a time", redactResource(raw))}
		}
		if !slices.Contains(out, t) {
			out = append(out, t)
		}
	}
	return out, nil
}

func sameOrigin(u, base *url.URL) bool {
	return strings.EqualFold(u.Scheme, base.Scheme) && strings.EqualFold(hostPort(u), hostPort(base))
}

func hostPort(u *url.URL) string {
	if u.Port() != "" {
		return u.Host
	}
	switch strings.ToLower(u.Scheme) {
	case "https":
		return u.Hostname() + ":443"
	case "http":
		return u.Hostname() + ":80"
	}
	return u.Host
}

// redactResource is the resource as the audit log may show it: a refused
// request can carry anything, even a secret in userinfo or the query, so
// only scheme, host and path are kept.
func redactResource(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || !u.IsAbs() || u.Opaque != "" {
		return "(not an absolute URL)"
	}
	u.User, u.RawQuery, u.ForceQuery, u.Fragment, u.RawFragment = nil, "", false, "", ""
	return truncate(u.String(), 300)
}

// redactResources is redactResource of each resource, separated by spaces
// (a redacted URL holds none).
func redactResources(raws []string) string {
	out := make([]string, 0, min(len(raws), MaxResources))
	for _, raw := range raws[:min(len(raws), MaxResources)] {
		out = append(out, redactResource(raw))
	}
	return strings.Join(out, " ")
}

// projects lists the targets' project paths, separated by spaces.
func projects(ts []target) string {
	out := make([]string, len(ts))
	for i, t := range ts {
		out[i] = t.project
	}
	return strings.Join(out, " ")
}
