package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// ciSnippet returns the shell lines of the README's CI job (before_script, then script).
func ciSnippet(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(b), "# .gitlab-ci.yml — see contrib/gitlab-ci.yml\n")
	if !ok {
		t.Fatal("README has no CI job snippet")
	}
	block, _, _ := strings.Cut(rest, "```")
	var lines []string
	for _, l := range strings.Split(block, "\n") {
		if cmd, ok := strings.CutPrefix(strings.TrimSpace(l), "- "); ok {
			lines = append(lines, cmd)
		}
	}
	if len(lines) < 2 {
		t.Fatalf("README's CI snippet has %d commands:\n%s", len(lines), block)
	}
	return lines
}

// TestReadmeCISnippet runs the README's CI snippet literally in a fresh HOME, from inside the
// job's own checkout (where repository-local config would not help another project), and
// clones another project with it. contrib/gitlab-ci.yml shows the same commands.
func TestReadmeCISnippet(t *testing.T) {
	w := newWorld(t)
	d := w.startDaemon(t, daemonOpts{})
	lines := ciSnippet(t)

	contrib, err := os.ReadFile("../../contrib/gitlab-ci.yml")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range lines {
		if !strings.Contains(string(contrib), "- "+l+"\n") {
			t.Errorf("contrib/gitlab-ci.yml does not show README's %q", l)
		}
	}

	home := t.TempDir()
	checkout := filepath.Join(t.TempDir(), "app") // the job's own project, as the runner checks it out
	if out, err := exec.Command("git", "init", "-q", checkout).CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	cmd := exec.Command("sh", "-ec", strings.Join(lines, "\n"))
	cmd.Dir = checkout
	cmd.Env = []string{
		"PATH=" + binDir + string(os.PathListSeparator) + os.Getenv("PATH"),
		"HOME=" + home, "GIT_CONFIG_NOSYSTEM=1", "GIT_TERMINAL_PROMPT=0",
		"CI=true", "GITLAB_CI=true", "CI_SERVER_URL=" + w.gl.URL(), "CI_PROJECT_PATH=platform/app",
		"GLTOKEN_ID_TOKEN=" + w.job("main", true), "GLTOKEN_DAEMON=" + d.daemonURL(),
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("README's CI snippet failed: %v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(checkout, "lib", "README.md")); err != nil {
		t.Fatalf("the snippet did not clone platform/lib: %v\n%s", err, out)
	}
	assertNoSecrets(t, "snippet output", string(out))
	cfg, err := os.ReadFile(filepath.Join(home, ".gitconfig"))
	if err != nil || !strings.Contains(string(cfg), "helper = gltoken") {
		t.Fatalf("the global config in the fresh HOME: %v\n%s", err, cfg)
	}
}
