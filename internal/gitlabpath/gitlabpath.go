// Package gitlabpath holds GitLab's rule for the full path of a project, the
// one home of that rule in gltoken: the daemon's resource parsing and the
// policy's request check both use it.
//
// It follows Gitlab::PathRegex (lib/gitlab/path_regex.rb): a path segment
// holds letters, digits, '_', '-' and '.', and never starts with '-'
// (PATH_REGEX_STR); a namespace (group) segment also never ends in '.'
// (NAMESPACE_FORMAT_REGEX); no segment ends in ".git" or ".atom"
// (NO_SUFFIX_REGEX). On top of GitLab's rule, "." and ".." are never a
// segment, so a path can never be read as a relative one. GitLab's reserved
// words (TOP_LEVEL_ROUTES, PROJECT_WILDCARD_ROUTES) are not checked: GitLab
// answers "not found" for them.
package gitlabpath

import (
	"fmt"
	"strings"
)

// Limits: GitLab allows 20 levels of subgroups below a top-level group and
// 255 characters a segment; a full path is bounded at 1024 here.
const (
	MaxSegments   = 21
	MaxLen        = 1024
	MaxSegmentLen = 255
)

// CheckProject reports why full is not the full path of a GitLab project
// ("group/project", "group/sub/project"), or nil when it is one.
func CheckProject(full string) error {
	if len(full) > MaxLen {
		return fmt.Errorf("path is longer than %d characters", MaxLen)
	}
	n := strings.Count(full, "/") + 1
	if n < 2 || n > MaxSegments {
		return fmt.Errorf("%q does not name a project (group/project, at most %d segments)", truncate(full, 200), MaxSegments)
	}
	for i, seg := range strings.Split(full, "/") {
		if !validSegment(seg, i == n-1) {
			return fmt.Errorf("path segment %q is not a valid GitLab path", truncate(seg, 64))
		}
	}
	return nil
}

// ValidProject reports whether full is the full path of a GitLab project.
func ValidProject(full string) bool { return CheckProject(full) == nil }

// validSegment checks one segment; project is true for the last segment of a
// project path, which may end in '.' (a namespace segment may not).
func validSegment(seg string, project bool) bool {
	if seg == "" || len(seg) > MaxSegmentLen || seg == "." || seg == ".." || seg[0] == '-' {
		return false
	}
	if !project && seg[len(seg)-1] == '.' {
		return false
	}
	if strings.HasSuffix(seg, ".git") || strings.HasSuffix(seg, ".atom") {
		return false
	}
	for i := 0; i < len(seg); i++ {
		c := seg[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
