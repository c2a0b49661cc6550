package e2e

import (
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
)

// TestMakeHelp: `make help` into a pipe (a CI log, a pager) lists every
// documented target without terminal colour codes, with $(PREFIX) expanded.
func TestMakeHelp(t *testing.T) {
	cmd := exec.Command("make", "--no-print-directory", "-C", "../..", "help", "PREFIX=/opt/gltoken")
	cmd.Env = append(os.Environ(), "MAKEFLAGS=")
	out, err := cmd.Output() // stdout is a pipe, not a terminal
	if err != nil {
		t.Fatalf("make help: %v\n%s", err, out)
	}
	help := string(out)
	if strings.ContainsRune(help, '\x1b') {
		t.Errorf("make help into a pipe prints escape codes:\n%q", help)
	}
	if strings.Contains(help, "$(PREFIX)") || !strings.Contains(help, "/opt/gltoken/bin") {
		t.Errorf("make help does not expand $(PREFIX):\n%s", help)
	}
	makefile, err := os.ReadFile("../../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	targets := regexp.MustCompile(`(?m)^([a-zA-Z_-]+):.*## `).FindAllStringSubmatch(string(makefile), -1)
	if len(targets) < 9 {
		t.Fatalf("the Makefile documents %d targets", len(targets))
	}
	for _, m := range targets {
		if !regexp.MustCompile(`(?m)^  ` + m[1] + ` +\S`).MatchString(help) {
			t.Errorf("make help does not list %s:\n%s", m[1], help)
		}
	}
}
