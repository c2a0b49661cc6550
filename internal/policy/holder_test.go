package policy

import (
	"os"
	"path/filepath"
	"testing"
)

func TestHolderKeepsPolicyOnBadReload(t *testing.T) {
	f := filepath.Join(t.TempDir(), "policy.yaml")
	write := func(s string) {
		if err := os.WriteFile(f, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("rules:\n  - name: one\n    match: {project_path: platform/app}\n    allow: {projects: [platform/lib], scopes: [read_repository]}\n")
	h, err := NewHolder(f, Options{})
	if err != nil {
		t.Fatal(err)
	}
	write("rules: [\n")
	if _, err := h.Reload(); err == nil {
		t.Fatal("an invalid policy was accepted")
	}
	if got := h.Current().Rules(); len(got) != 1 || got[0] != "one" {
		t.Fatalf("policy in force after a refused reload: %v", got)
	}
	write("rules:\n  - name: two\n    match: {project_path: platform/app}\n    allow: {projects: [platform/lib], scopes: [read_repository]}\n")
	if _, err := h.Reload(); err != nil {
		t.Fatal(err)
	}
	if got := h.Current().Rules(); got[0] != "two" {
		t.Fatalf("policy after reload: %v", got)
	}
	if ok, refused := h.Reloads(); ok != 1 || refused != 1 {
		t.Fatalf("reloads %d/%d, want 1/1", ok, refused)
	}
}
