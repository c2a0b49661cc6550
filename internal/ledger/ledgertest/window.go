package ledgertest

import (
	"context"
	"fmt"
	"testing"
	"time"

	"gltoken.dev/gltoken/internal/ledger"
)

// WindowStore is a Store that lists the records created in a window, a
// page at a time (exchanged suggest reads the ledger with it).
type WindowStore interface {
	ledger.Store
	CreatedSince(ctx context.Context, since time.Time, after string, limit int) ([]ledger.Record, error)
}

// RunWindow checks CreatedSince: records created at or after since, by id,
// at most limit, after the cursor; every page joined is the window, once.
func RunWindow(t *testing.T, open func(t *testing.T) WindowStore) {
	ctx := t.Context()
	s := open(t)
	t0 := time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)
	// Ids out of creation order, so that order by id is checked.
	for i, id := range []string{"r-09", "r-03", "r-07", "r-01", "r-05", "r-02", "r-08"} {
		created := t0.Add(time.Duration(i) * time.Minute)
		if err := s.CreateIntent(ctx, NewRecord(id, created, created.Add(time.Hour))); err != nil {
			t.Fatal(err)
		}
	}
	since := t0.Add(2 * time.Minute) // r-07 and later
	var got []string
	after := ""
	for pages := 0; ; pages++ {
		if pages > 10 {
			t.Fatal("pagination does not end")
		}
		page, err := s.CreatedSince(ctx, since, after, 2)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) > 2 {
			t.Fatalf("page of %d records, limit 2", len(page))
		}
		for _, r := range page {
			if r.CreatedAt.Before(since) {
				t.Errorf("%s created %s, before %s", r.ID, r.CreatedAt, since)
			}
			got = append(got, r.ID)
		}
		if len(page) < 2 {
			break
		}
		after = page[len(page)-1].ID
	}
	if want := []string{"r-01", "r-02", "r-05", "r-07", "r-08"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("window %v, want %v", got, want)
	}
	if _, err := s.CreatedSince(ctx, since, "", 0); err == nil {
		t.Error("limit 0 accepted")
	}
	if page, err := s.CreatedSince(ctx, t0.Add(time.Hour), "", 10); err != nil || len(page) != 0 {
		t.Errorf("empty window: %v %v", page, err)
	}
}
