package exchange

import "testing"

// TestParseResourceFollowsGitLabPaths: the resource's path is checked by
// GitLab's rule (Gitlab::PathRegex), the same one the policy applies: a
// project may start with '.', no segment with '-'.
func TestParseResourceFollowsGitLabPaths(t *testing.T) {
	o, err := newOrigins("https://gitlab.example.com", "")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		resource, project string // project "" = refused
	}{
		{"https://gitlab.example.com/platform/.dotfiles.git", "platform/.dotfiles"},
		{"https://gitlab.example.com/.hidden/app", ".hidden/app"},
		{"https://gitlab.example.com/platform/app.", "platform/app."},
		{"https://gitlab.example.com/platform/-app.git", ""},
		{"https://gitlab.example.com/platform./app.git", ""},
		{"https://gitlab.example.com/platform/app.git.git", ""},
		{"https://gitlab.example.com/platform/..", ""},
	} {
		got, err := o.parse(tc.resource)
		switch {
		case tc.project == "" && err == nil:
			t.Errorf("%s accepted as %q", tc.resource, got.project)
		case tc.project != "" && (err != nil || got.project != tc.project):
			t.Errorf("%s = %q, %v; want %q", tc.resource, got.project, err, tc.project)
		}
	}
}
