package gitlabpath

import (
	"strings"
	"testing"
)

// TestProjectPath follows Gitlab::PathRegex: a segment may start with '.'
// (".dotfiles") but not with '-'; a group segment may not end in '.', a
// project may; no segment ends in .git or .atom.
func TestProjectPath(t *testing.T) {
	for _, tc := range []struct {
		path string
		ok   bool
	}{
		{"group/project", true},
		{"a/b/c/d", true},
		{"group/.dotfiles", true},
		{".hidden/project", true},
		{"_under/score_", true},
		{"group/project.", true},
		{"group/v1.2-rc_3", true},
		{"group/-dash", false},
		{"-group/project", false},
		{"group./project", false},
		{"group/project.git", false},
		{"group.git/project", false},
		{"group/feed.atom", false},
		{"group/..", false},
		{"group/.", false},
		{"../project", false},
		{"project", false},
		{"", false},
		{"group//project", false},
		{"/group/project", false},
		{"group/project/", false},
		{"group/pro ject", false},
		{"group/pröject", false},
		{"group/" + strings.Repeat("a", 255), true},
		{"group/" + strings.Repeat("a", 256), false},
		{strings.Repeat("g/", 20) + "p", true},
		{strings.Repeat("g/", 21) + "p", false},
	} {
		if got := ValidProject(tc.path); got != tc.ok {
			t.Errorf("ValidProject(%q) = %v, want %v (%v)", tc.path, got, tc.ok, CheckProject(tc.path))
		}
	}
}
