package gitlabfake

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// TestBinariesDoNotLinkTesting: the stand-in is a library of the demo,
// gitlab-standin and loadgen binaries, so it must not import testing (Start
// takes the small TB interface instead); and the shipped binaries never link
// the stand-in at all.
func TestBinariesDoNotLinkTesting(t *testing.T) {
	t.Parallel()
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go command is needed to list the binaries' dependencies: %v", err)
	}
	tests := []struct {
		pkg       string
		forbidden []string
	}{
		{"gltoken.dev/gltoken/internal/cmd/demo", []string{"testing"}},
		{"gltoken.dev/gltoken/internal/cmd/gitlab-standin", []string{"testing"}},
		{"gltoken.dev/gltoken/internal/cmd/loadgen", []string{"testing"}},
		{"gltoken.dev/gltoken/cmd/exchanged", []string{"testing", "gltoken.dev/gltoken/internal/gitlabfake"}},
		{"gltoken.dev/gltoken/cmd/git-credential-gltoken", []string{"testing", "gltoken.dev/gltoken/internal/gitlabfake"}},
	}
	for _, tt := range tests {
		out, err := exec.Command(goBin, "list", "-deps", tt.pkg).Output()
		if err != nil {
			t.Fatalf("go list -deps %s: %v", tt.pkg, err)
		}
		deps := strings.Fields(string(out))
		if !slices.Contains(deps, tt.pkg) || !slices.Contains(deps, "fmt") {
			t.Fatalf("go list -deps %s did not list the package and its dependencies: %q", tt.pkg, deps)
		}
		for _, f := range tt.forbidden {
			if slices.Contains(deps, f) {
				t.Errorf("%s links %s", tt.pkg, f)
			}
		}
	}
}
