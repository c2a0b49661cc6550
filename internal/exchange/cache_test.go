package exchange

import (
	"fmt"
	"gltoken.dev/gltoken/internal/fingerprint"
	"testing"
	"time"
)

// TestCachePutDropsExpired: put drops every entry expired at its now (the
// cache holds one entry per live credential and job, so expired ones must
// not pile up), keeps the live ones, and a key put again keeps its newer
// expiry.
func TestCachePutDropsExpired(t *testing.T) {
	c := NewCache()
	t0 := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	entry := func(id string, exp time.Time, reuse string) cached {
		return cached{ledgerID: id, reuse: reuse, cred: Credential{Secret: "secret-" + id, ExpiresAt: exp}}
	}
	for i := range 100 {
		c.put(fmt.Sprint("short", i), entry(fmt.Sprint("s", i), t0.Add(time.Minute), ""), t0)
	}
	c.put("shared-job", entry("shared", t0.Add(time.Minute), "reuse-key"), t0)
	c.put("again", entry("old", t0.Add(time.Minute), ""), t0)
	c.put("again", entry("new", t0.Add(time.Hour), ""), t0)
	c.put("long", entry("long", t0.Add(time.Hour), ""), t0)
	if n := len(c.byKey); n != 104 { // 100 + the shared credential under two keys + again + long
		t.Fatalf("%d entries before expiry, want 104", n)
	}

	c.put("late", entry("late", t0.Add(2*time.Hour), ""), t0.Add(time.Minute))
	want := map[string]string{"again": "new", "long": "long", "late": "late"}
	if len(c.byKey) != len(want) {
		t.Fatalf("entries after the minute: %d, want %v", len(c.byKey), want)
	}
	for k, id := range want {
		if e, ok := c.byKey[k]; !ok || e.ledgerID != id {
			t.Errorf("entry %q: %+v, %v; want ledger id %s", k, e, ok, id)
		}
	}
	if len(c.bySHA) != 3 || len(c.shared) != 0 {
		t.Errorf("indexes not emptied: %d fingerprints, %d reuse keys", len(c.bySHA), len(c.shared))
	}
	if _, ok := c.getShared("reuse-key", t0, t0.Add(time.Hour)); ok {
		t.Error("an expired shared credential is still offered")
	}
}

// TestCacheExpiriesStayBounded: entries forgotten before they expire
// (revocations) do not leave their expiry items behind without bound.
func TestCacheExpiriesStayBounded(t *testing.T) {
	c := NewCache()
	t0 := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	for i := range 10_000 {
		id := fmt.Sprint("r", i)
		c.put(id, cached{ledgerID: id, cred: Credential{Secret: id, ExpiresAt: t0.Add(time.Hour)}}, t0)
		c.forgetSecret(fingerprint.Of(id))
	}
	if len(c.byKey) != 0 {
		t.Fatalf("%d entries left", len(c.byKey))
	}
	if n := len(c.expiries); n > 100 {
		t.Fatalf("%d expiry items for no entry", n)
	}
}

// TestCachePutUnderSharedKey: a credential read back from the ledger is put
// under its shared key itself (fromLedger), and is offered and forgotten
// like any other.
func TestCachePutUnderSharedKey(t *testing.T) {
	c := NewCache()
	t0 := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	e := cached{ledgerID: "sealed", reuse: "reuse-key", cred: Credential{Secret: "secret", ExpiresAt: t0.Add(time.Hour)}}
	c.put(sharedEntryKey("sealed"), e, t0)
	c.put(sharedEntryKey("sealed"), e, t0)
	if got, ok := c.getShared("reuse-key", t0, t0.Add(2*time.Hour)); !ok || got.ledgerID != "sealed" {
		t.Fatalf("getShared: %+v, %v", got, ok)
	}
	c.forgetSecret(fingerprint.Of("secret"))
	if len(c.byKey) != 0 || len(c.bySHA) != 0 || len(c.shared) != 0 {
		t.Fatalf("left after forgetSecret: %d entries, %d fingerprints, %d reuse keys", len(c.byKey), len(c.bySHA), len(c.shared))
	}
}

// TestCacheHoldSharesOneEntry: every job handed a shared credential points
// at its one entry (thousands of jobs can share one), its own key answers
// it, and a credential dropped in between is not cached again.
func TestCacheHoldSharesOneEntry(t *testing.T) {
	c := NewCache()
	t0 := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	c.put("minter", cached{ledgerID: "l1", reuse: "reuse-key", cred: Credential{Secret: "secret", ExpiresAt: t0.Add(time.Hour)}}, t0)
	for i := range 3 {
		c.hold(fmt.Sprint("job", i), "l1", t0)
	}
	one := c.byKey[sharedEntryKey("l1")]
	for i := range 3 {
		if p := c.byKey[fmt.Sprint("job", i)]; p != one {
			t.Fatalf("job%d: its own entry %p, not the shared one %p", i, p, one)
		}
		if e, ok := c.get(fmt.Sprint("job", i), t0); !ok || e.ledgerID != "l1" {
			t.Fatalf("job%d: get %+v, %v", i, e, ok)
		}
	}
	if len(c.shared["reuse-key"]) != 1 {
		t.Fatalf("jobs' own keys offered to other jobs: %v", c.shared["reuse-key"])
	}
	c.forgetLocked("job0")
	if _, ok := c.getShared("reuse-key", t0, t0.Add(2*time.Hour)); !ok {
		t.Fatal("forgetting one job's key withdrew the shared credential")
	}
	c.forgetLedgerID("l1")
	c.hold("late", "l1", t0)
	if len(c.byKey) != 0 || len(c.bySHA) != 0 || len(c.shared) != 0 {
		t.Fatalf("left after forgetLedgerID and a late hold: %d entries, %d fingerprints, %d reuse keys", len(c.byKey), len(c.bySHA), len(c.shared))
	}
}
