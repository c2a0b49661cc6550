package daemon

import (
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"gltoken.dev/gltoken/internal/ledger/ledgertest"
	"gltoken.dev/gltoken/internal/policy"
	"gltoken.dev/gltoken/internal/sqlite"
	"gltoken.dev/gltoken/internal/suggest"
)

// TestAnalysePages: the window is read in pages and every record of it is
// counted once, with its holders; records from before it are not.
func TestAnalysePages(t *testing.T) {
	ctx := t.Context()
	store, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	pol, err := policy.Parse([]byte(`rules:
  - name: app-reads-libs
    match: {project_path: platform/app}
    allow: {projects: ["platform/**"], scopes: [read_repository, read_registry]}
`), "policy.yaml", policy.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)
	for i := range 11 {
		created := t0.Add(time.Duration(i-3) * time.Minute) // three before the window
		r := ledgertest.NewRecord(fmt.Sprintf("r-%02d", 10-i), created, created.Add(time.Hour))
		r.JobID, r.TokenExpiresAt = fmt.Sprintf("job-%d", i), created.Add(time.Hour)
		if err := store.CreateIntent(ctx, r); err != nil {
			t.Fatal(err)
		}
		if _, err := store.ReleaseJob(ctx, r.JobID, created.Add(2*time.Minute)); err != nil {
			t.Fatal(err)
		}
	}
	for _, page := range []int{1, 3, 500} {
		rep, err := analyse(ctx, store, pol, suggest.Options{Since: t0, Until: t0.Add(time.Hour)}, page)
		if err != nil {
			t.Fatal(err)
		}
		rr := rep.Rules[0]
		if rep.Credentials != 8 || rr.Minted != 8 || rr.Jobs != 8 || rr.Holds.Released != 8 || rr.Holds.MaxSeconds != 120 {
			t.Errorf("page %d: credentials %d, rule %+v", page, rep.Credentials, rr)
		}
		if rr.Suggestion.Action != suggest.ActionNarrow {
			t.Errorf("page %d: suggestion %+v", page, rr.Suggestion)
		}
	}
}
