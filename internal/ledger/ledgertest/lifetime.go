package ledgertest

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"gltoken.dev/gltoken/internal/ledger"
)

func testNextDue(t *testing.T, s ledger.Store) {
	ctx := ctxFor(t)
	if _, ok, err := s.NextDue(ctx); err != nil || ok {
		t.Fatalf("NextDue on an empty store = %v, %v", ok, err)
	}
	mustCreate(t, s, NewRecord("nd-a", t0, t0.Add(time.Minute)))
	mustCreate(t, s, NewRecord("nd-b", t0, t0.Add(2*time.Minute)))
	mustCreate(t, s, NewRecord("nd-c", t0, t0.Add(3*time.Minute)))
	mustActivate(t, s, "nd-b", t0.Add(30*time.Second)) // due at its expiry, earlier than the others
	next, ok, err := s.NextDue(ctx)
	if err != nil || !ok {
		t.Fatalf("NextDue = %v, %v", ok, err)
	}
	checkTime(t, "NextDue", next, t0.Add(30*time.Second))
	if err := s.MarkRevoked(ctx, "nd-b", t0); err != nil {
		t.Fatal(err)
	}
	if err := s.Abandon(ctx, "nd-a", "test"); err != nil {
		t.Fatal(err)
	}
	next, ok, err = s.NextDue(ctx)
	if err != nil || !ok {
		t.Fatalf("NextDue = %v, %v", ok, err)
	}
	checkTime(t, "NextDue after settling two", next, t0.Add(3*time.Minute))
}

func testCountOverdue(t *testing.T, s ledger.Store) {
	ctx := ctxFor(t)
	count := func(before time.Time) int {
		t.Helper()
		n, err := s.CountOverdue(ctx, before)
		if err != nil {
			t.Fatalf("CountOverdue: %v", err)
		}
		return n
	}
	if n := count(t0); n != 0 {
		t.Fatalf("CountOverdue on an empty store = %d", n)
	}
	for _, id := range []string{"od-a", "od-b", "od-c", "od-d"} {
		mustCreate(t, s, NewRecord(id, t0, t0.Add(time.Minute))) // ExpiresAt t0+1h
	}
	mustActivate(t, s, "od-a", t0.Add(time.Hour))
	mustActivate(t, s, "od-b", t0.Add(2*time.Hour))
	mustActivate(t, s, "od-c", t0.Add(time.Hour))
	if err := s.MarkRevoked(ctx, "od-c", t0); err != nil {
		t.Fatal(err)
	}
	// od-a (active) and od-d (pending, expiring at t0+1h) are past t0+1h+1s; od-c is revoked.
	if n := count(t0.Add(time.Hour + time.Second)); n != 2 {
		t.Errorf("CountOverdue(t0+1h1s) = %d, want 2", n)
	}
	if n := count(t0.Add(time.Hour)); n != 0 {
		t.Errorf("CountOverdue(t0+1h) = %d, want 0 (not before)", n)
	}
	if n := count(t0.Add(3 * time.Hour)); n != 3 {
		t.Errorf("CountOverdue(t0+3h) = %d, want 3", n)
	}
}

func testOwners(t *testing.T, s ledger.Store) {
	ctx := ctxFor(t)
	add := func(id string, kind ledger.Kind, owner int64, created time.Time) {
		r := NewRecord(id, created, created.Add(time.Minute))
		r.Kind, r.Owner = kind, owner
		mustCreate(t, s, r)
	}
	add("ow-1", ledger.ProjectAccessToken, 10, t0)
	add("ow-2", ledger.ProjectAccessToken, 10, t0.Add(time.Minute))
	add("ow-3", ledger.ProjectAccessToken, 11, t0.Add(time.Hour))
	add("ow-4", ledger.GroupAccessToken, 10, t0.Add(time.Hour))
	add("ow-5", ledger.ProjectDeployToken, 12, t0.Add(time.Hour))
	add("ow-6", ledger.ProjectAccessToken, 13, t0.Add(-time.Hour)) // too old
	add("ow-7", ledger.ProjectAccessToken, 0, t0.Add(time.Hour))   // from before owners were ids
	got, err := s.Owners(ctx, []ledger.Kind{ledger.ProjectAccessToken, ledger.GroupAccessToken}, t0)
	if err != nil {
		t.Fatal(err)
	}
	key := func(o ledger.OwnerRef) string { return fmt.Sprintf("%s:%d", o.Kind, o.Owner) }
	var keys []string
	for _, o := range got {
		keys = append(keys, key(o))
	}
	slices.Sort(keys)
	want := []string{"group_access_token:10", "project_access_token:10", "project_access_token:11"}
	if !slices.Equal(keys, want) {
		t.Errorf("Owners = %v, want %v", keys, want)
	}
	if got, err := s.Owners(ctx, nil, t0); err != nil || len(got) != 0 {
		t.Errorf("Owners(no kinds) = %v, %v", got, err)
	}
}
