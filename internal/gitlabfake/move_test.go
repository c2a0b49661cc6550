package gitlabfake

import "testing"

// TestMovedProjectIsFoundByItsOldPath: like GitLab's API, the stand-in finds
// a project by any case of its path and by an old path left by a move.
func TestMovedProjectIsFoundByItsOldPath(t *testing.T) {
	f := newFixture(t)
	c := newClient(t, f.s, f.svcPAT)
	p, _, err := c.Projects.GetProject("Platform/APP", nil)
	if err != nil || p.ID != f.project.ID || p.PathWithNamespace != "platform/app" {
		t.Fatalf("case-insensitive lookup: %+v %v", p, err)
	}
	if err := f.s.MoveProject("platform/app", "finance/app"); err != nil {
		t.Fatal(err)
	}
	p, _, err = c.Projects.GetProject("platform/app", nil)
	if err != nil || p.ID != f.project.ID || p.PathWithNamespace != "finance/app" {
		t.Fatalf("old path after a move: %+v %v", p, err)
	}
	if _, ok := f.s.ProjectByPath("finance/app"); !ok {
		t.Fatal("new path unknown")
	}
}
