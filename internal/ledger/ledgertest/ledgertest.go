// Package ledgertest is the contract suite every ledger.Store passes. A store's
// test calls Run with a function that opens a fresh, empty store, RunShared
// with one that opens two Store instances on the same database (for stores
// that several processes may share), and the Bench* functions from its
// benchmarks.
package ledgertest

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"gltoken.dev/gltoken/internal/fingerprint"
	"gltoken.dev/gltoken/internal/ledger"
)

// maxErrorLen is the longest LastError a store keeps (see ledger.Store).
const maxErrorLen = 1024

// zone is a non-UTC zone for inputs: stores must hand back UTC whatever they get.
var zone = time.FixedZone("UTC+05:30", 5*3600+30*60)

// t0 is the suite's reference time: nanoseconds set, so precision is exercised.
var t0 = time.Date(2026, 11, 27, 2, 0, 0, 123456789, zone)

// Run runs the contract suite. open must return a fresh, empty store for the
// test it is given, and arrange (with t.Cleanup) whatever tear-down it needs;
// the suite closes the store itself too, so Close must tolerate a second call.
func Run(t *testing.T, open func(t *testing.T) ledger.Store) {
	t.Helper()
	tests := []struct {
		name string
		fn   func(t *testing.T, s ledger.Store)
	}{
		{"CreateGetRoundTrip", testCreateGetRoundTrip},
		{"MillisecondTimesExact", testMillisecondTimesExact},
		{"ScopesRoundTrip", testScopesRoundTrip},
		{"CreateIntentRefusesBadInput", testCreateIntentRefusesBadInput},
		{"DuplicateID", testDuplicateID},
		{"GetUnknown", testGetUnknown},
		{"Activate", testActivate},
		{"ActivateOnlyFromPending", testActivateOnlyFromPending},
		{"ActivateRefusesBadInput", testActivateRefusesBadInput},
		{"Abandon", testAbandon},
		{"MarkRevoked", testMarkRevoked},
		{"ClaimDueOrderLimitLease", testClaimDueOrderLimitLease},
		{"ClaimDueActiveAtRevocationTime", testClaimDueActiveAtRevocationTime},
		{"ClaimDueRefusesBadInput", testClaimDueRefusesBadInput},
		{"RetryLater", testRetryLater},
		{"ReleaseClaims", testReleaseClaims},
		{"ErrorTextSanitized", testErrorTextSanitized},
		{"FindBySecret", testFindBySecret},
		{"ListPending", testListPending},
		{"CountActive", testCountActive},
		{"NextDue", testNextDue},
		{"CountOverdue", testCountOverdue},
		{"Owners", testOwners},
		{"CanceledContext", testCanceledContext},
		{"ConcurrentClaimDue", func(t *testing.T, s ledger.Store) { testConcurrentClaimDue(t, s, s) }},
		{"ConcurrentCreateSameID", func(t *testing.T, s ledger.Store) { testConcurrentCreateSameID(t, s, s) }},
		{"ConcurrentActivateAbandon", func(t *testing.T, s ledger.Store) { testConcurrentActivateAbandon(t, s, s) }},
		{"FirstHolder", testFirstHolder},
		{"AddHolder", testAddHolder},
		{"AddHolderRefusesBadInput", testAddHolderRefusesBadInput},
		{"Holds", testHolds},
		{"ReleaseJob", testReleaseJob},
		{"SlotHolders", testSlotHolders},
		{"LiveHolds", testLiveHolds},
		{"SealSecret", testSealSecret},
		{"Reusable", testReusable},
		{"ConcurrentHoldRelease", func(t *testing.T, s ledger.Store) { testConcurrentHoldRelease(t, s, s) }},
		{"Rotated", testRotated},
		{"PingClose", testPingClose},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := open(t)
			t.Cleanup(func() {
				if err := s.Close(); err != nil {
					t.Errorf("Close: %v", err)
				}
			})
			tc.fn(t, s)
		})
	}
}

// RunShared runs the parts of the suite that matter when several Store
// instances (processes, replicas) share one database. openPair must return
// two instances on the same fresh, empty database.
func RunShared(t *testing.T, openPair func(t *testing.T) (ledger.Store, ledger.Store)) {
	t.Helper()
	tests := []struct {
		name string
		fn   func(t *testing.T, a, b ledger.Store)
	}{
		{"SeesOtherInstancesWrites", testSeesOtherInstancesWrites},
		{"ConcurrentClaimDue", testConcurrentClaimDue},
		{"ConcurrentCreateSameID", testConcurrentCreateSameID},
		{"ConcurrentActivateAbandon", testConcurrentActivateAbandon},
		{"ConcurrentHoldRelease", testConcurrentHoldRelease},
		{"SlotLocks", testSlotLocks},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a, b := openPair(t)
			t.Cleanup(func() {
				if err := a.Close(); err != nil {
					t.Errorf("Close a: %v", err)
				}
				if err := b.Close(); err != nil {
					t.Errorf("Close b: %v", err)
				}
			})
			tc.fn(t, a, b)
		})
	}
}

// NewRecord returns a Pending record with every field set, created at
// created and due (its mint lease ending) at due.
func NewRecord(id string, created, due time.Time) ledger.Record {
	return ledger.Record{
		ID:         id,
		State:      ledger.Pending,
		Kind:       ledger.ProjectDeployToken,
		Owner:      42,
		OwnerPath:  "platform/lib",
		Scopes:     []string{"read_repository", "read_registry"},
		Resource:   "https://gitlab.example.com/platform/lib.git",
		Rule:       "app-reads-libs",
		Subject:    "project_path:platform/app:ref_type:branch:ref:main",
		ProjectID:  "7",
		PipelineID: "1001",
		JobID:      "5005",
		TokenJTI:   "8f5c7f4e-0d0b-4d43-9b7a-" + id,
		// The requesting job's ID token outlives the credential.
		TokenExpiresAt: created.Add(2 * time.Hour),
		ReuseKey:       "grant-platform-app-lib",
		CreatedAt:      created,
		ExpiresAt:      created.Add(time.Hour),
		NextAttemptAt:  due,
	}
}

func ctxFor(t *testing.T) context.Context { return t.Context() }

func mustCreate(t *testing.T, s ledger.Store, r ledger.Record) {
	t.Helper()
	if err := s.CreateIntent(ctxFor(t), r); err != nil {
		t.Fatalf("CreateIntent(%s): %v", r.ID, err)
	}
}

func mustGet(t *testing.T, s ledger.Store, id string) ledger.Record {
	t.Helper()
	r, err := s.Get(ctxFor(t), id)
	if err != nil {
		t.Fatalf("Get(%s): %v", id, err)
	}
	return r
}

func mustActivate(t *testing.T, s ledger.Store, id string, expires time.Time) string {
	t.Helper()
	sha := fingerprint.Of("gldt-secret-" + id)
	if err := s.Activate(ctxFor(t), id, 4242, "gitlab+deploy-token-4242", sha, expires); err != nil {
		t.Fatalf("Activate(%s): %v", id, err)
	}
	return sha
}

// checkTime checks that got is want as a store may keep it: in UTC, and
// within a millisecond (stores keep at least millisecond precision).
func checkTime(t *testing.T, field string, got, want time.Time) {
	t.Helper()
	if want.IsZero() {
		if !got.IsZero() {
			t.Errorf("%s = %v, want the zero time", field, got)
		}
		return
	}
	if got.Location() != time.UTC {
		t.Errorf("%s location = %v, want UTC", field, got.Location())
	}
	if d := got.Sub(want); d <= -time.Millisecond || d >= time.Millisecond {
		t.Errorf("%s = %v, want %v (to the millisecond)", field, got, want.UTC())
	}
}

// checkRecord compares every field of got with want.
func checkRecord(t *testing.T, got, want ledger.Record) {
	t.Helper()
	type str struct {
		name      string
		got, want string
	}
	for _, f := range []str{
		{"ID", got.ID, want.ID},
		{"State", string(got.State), string(want.State)},
		{"Kind", string(got.Kind), string(want.Kind)},
		{"OwnerPath", got.OwnerPath, want.OwnerPath},
		{"Resource", got.Resource, want.Resource},
		{"Rule", got.Rule, want.Rule},
		{"Subject", got.Subject, want.Subject},
		{"ProjectID", got.ProjectID, want.ProjectID},
		{"PipelineID", got.PipelineID, want.PipelineID},
		{"JobID", got.JobID, want.JobID},
		{"TokenJTI", got.TokenJTI, want.TokenJTI},
		{"Username", got.Username, want.Username},
		{"SecretSHA256", got.SecretSHA256, want.SecretSHA256},
		{"LastError", got.LastError, want.LastError},
		{"ReuseKey", got.ReuseKey, want.ReuseKey},
		{"SecretKeyID", got.SecretKeyID, want.SecretKeyID},
		{"SealedSecret", string(got.SealedSecret), string(want.SealedSecret)},
	} {
		if f.got != f.want {
			t.Errorf("%s = %q, want %q", f.name, f.got, f.want)
		}
	}
	if !slices.Equal(got.Scopes, want.Scopes) {
		t.Errorf("Scopes = %q, want %q", got.Scopes, want.Scopes)
	}
	if got.Owner != want.Owner {
		t.Errorf("Owner = %d, want %d", got.Owner, want.Owner)
	}
	if got.GitLabID != want.GitLabID {
		t.Errorf("GitLabID = %d, want %d", got.GitLabID, want.GitLabID)
	}
	if got.Attempts != want.Attempts {
		t.Errorf("Attempts = %d, want %d", got.Attempts, want.Attempts)
	}
	checkTime(t, "CreatedAt", got.CreatedAt, want.CreatedAt)
	checkTime(t, "ExpiresAt", got.ExpiresAt, want.ExpiresAt)
	checkTime(t, "NextAttemptAt", got.NextAttemptAt, want.NextAttemptAt)
	checkTime(t, "RevokedAt", got.RevokedAt, want.RevokedAt)
	checkTime(t, "TokenExpiresAt", got.TokenExpiresAt, want.TokenExpiresAt)
}

func ids(rs []ledger.Record) []string {
	out := make([]string, len(rs))
	for i, r := range rs {
		out[i] = r.ID
	}
	return out
}

func testCreateGetRoundTrip(t *testing.T, s ledger.Store) {
	full := NewRecord("rt-full", t0, t0.Add(2*time.Minute))
	// CreateIntent keeps every field as given, even those that are normally
	// set later.
	full.GitLabID = 1 << 40
	full.Owner = 1<<53 + 1 // not exact as a float64: the store keeps an integer
	full.Username = "gitlab+deploy-token-99"
	full.SecretSHA256 = fingerprint.Of("gldt-not-really")
	full.Attempts = 3
	full.LastError = "GitLab said 503 — try again: ünïcode ok"
	full.RevokedAt = t0.Add(3 * time.Hour)
	full.Kind = ledger.GroupAccessToken
	mustCreate(t, s, full)
	checkRecord(t, mustGet(t, s, full.ID), full)

	// A minimal record: zero times stay zero, empty strings stay empty, and
	// an empty State means Pending.
	bare := ledger.Record{ID: "rt-bare", Kind: ledger.ProjectAccessToken, CreatedAt: t0, NextAttemptAt: t0.Add(time.Minute)}
	mustCreate(t, s, bare)
	want := bare
	want.State = ledger.Pending
	got := mustGet(t, s, bare.ID)
	checkRecord(t, got, want)
	if len(got.Scopes) != 0 {
		t.Errorf("Scopes = %q, want empty", got.Scopes)
	}

	// Every kind round-trips.
	for i, k := range []ledger.Kind{ledger.ProjectDeployToken, ledger.GroupDeployToken, ledger.ProjectAccessToken, ledger.GroupAccessToken} {
		r := NewRecord(fmt.Sprintf("rt-kind-%d", i), t0, t0)
		r.Kind = k
		mustCreate(t, s, r)
		if got := mustGet(t, s, r.ID); got.Kind != k {
			t.Errorf("Kind = %q, want %q", got.Kind, k)
		}
	}
}

func testMillisecondTimesExact(t *testing.T, s ledger.Store) {
	base := time.Date(2031, 2, 3, 4, 5, 6, 789_000_000, zone)
	r := NewRecord("ms", base, base.Add(1500*time.Millisecond))
	r.ExpiresAt = base.Add(-time.Millisecond)
	mustCreate(t, s, r)
	got := mustGet(t, s, r.ID)
	for _, f := range []struct {
		name      string
		got, want time.Time
	}{
		{"CreatedAt", got.CreatedAt, r.CreatedAt},
		{"ExpiresAt", got.ExpiresAt, r.ExpiresAt},
		{"NextAttemptAt", got.NextAttemptAt, r.NextAttemptAt},
	} {
		if !f.got.Equal(f.want) || f.got.Location() != time.UTC {
			t.Errorf("%s = %v, want exactly %v in UTC", f.name, f.got, f.want.UTC())
		}
	}
}

func testScopesRoundTrip(t *testing.T, s ledger.Store) {
	for i, scopes := range [][]string{
		{"read_repository"},
		{"write_registry", "read_registry", "read_repository"}, // order kept
		{"a,b", `q"uote`, "sp ace", "{brace}", "ünï"},          // a list, not a joined string
		{"", "read_api"},
	} {
		r := NewRecord(fmt.Sprintf("scopes-%d", i), t0, t0)
		r.Scopes = scopes
		mustCreate(t, s, r)
		if got := mustGet(t, s, r.ID).Scopes; !slices.Equal(got, scopes) {
			t.Errorf("Scopes = %q, want %q", got, scopes)
		}
	}
	for i, scopes := range [][]string{nil, {}} {
		r := NewRecord(fmt.Sprintf("scopes-empty-%d", i), t0, t0)
		r.Scopes = scopes
		mustCreate(t, s, r)
		if got := mustGet(t, s, r.ID).Scopes; len(got) != 0 {
			t.Errorf("Scopes = %q, want empty", got)
		}
	}
}

func testCreateIntentRefusesBadInput(t *testing.T, s ledger.Store) {
	tests := []struct {
		name   string
		mutate func(r *ledger.Record)
	}{
		{"empty id", func(r *ledger.Record) { r.ID = "" }},
		{"active state", func(r *ledger.Record) { r.State = ledger.Active }},
		{"revoked state", func(r *ledger.Record) { r.State = ledger.Revoked }},
		{"unknown state", func(r *ledger.Record) { r.State = "sleeping" }},
		{"unknown kind", func(r *ledger.Record) { r.Kind = "personal_access_token" }},
		{"empty kind", func(r *ledger.Record) { r.Kind = "" }},
		{"zero created", func(r *ledger.Record) { r.CreatedAt = time.Time{} }},
		{"zero next attempt", func(r *ledger.Record) { r.NextAttemptAt = time.Time{} }},
		{"raw secret as fingerprint", func(r *ledger.Record) { r.SecretSHA256 = "gldt-abcdefghijklmnopqrst" }},
		{"short fingerprint", func(r *ledger.Record) { r.SecretSHA256 = fingerprint.Of("x")[:40] }},
		{"negative attempts", func(r *ledger.Record) { r.Attempts = -1 }},
		{"sealed secret", func(r *ledger.Record) { r.SecretKeyID, r.SealedSecret = "k1", []byte("sealed") }},
		{"sealed secret without key id", func(r *ledger.Record) { r.SealedSecret = []byte("sealed") }},
		{"key id without sealed secret", func(r *ledger.Record) { r.SecretKeyID = "k1" }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := NewRecord("bad-input", t0, t0)
			tc.mutate(&r)
			if err := s.CreateIntent(ctxFor(t), r); err == nil {
				t.Fatal("CreateIntent accepted it")
			} else if errors.Is(err, ledger.ErrExists) {
				t.Fatalf("CreateIntent: %v, want a validation error", err)
			}
			if _, err := s.Get(ctxFor(t), "bad-input"); !errors.Is(err, ledger.ErrNotFound) {
				t.Fatalf("Get after refused create: err = %v, want ErrNotFound", err)
			}
		})
	}
	// An upper-case fingerprint is accepted and kept lower-case.
	r := NewRecord("upper-sha", t0, t0)
	r.SecretSHA256 = strings.ToUpper(fingerprint.Of("y"))
	mustCreate(t, s, r)
	if got := mustGet(t, s, r.ID).SecretSHA256; got != fingerprint.Of("y") {
		t.Errorf("SecretSHA256 = %q, want %q", got, fingerprint.Of("y"))
	}
}

func testDuplicateID(t *testing.T, s ledger.Store) {
	r := NewRecord("dup", t0, t0)
	mustCreate(t, s, r)
	other := NewRecord("dup", t0.Add(time.Hour), t0.Add(time.Hour))
	other.Rule = "another-rule"
	if err := s.CreateIntent(ctxFor(t), other); !errors.Is(err, ledger.ErrExists) {
		t.Fatalf("second CreateIntent: err = %v, want ErrExists", err)
	}
	checkRecord(t, mustGet(t, s, "dup"), r)

	// Also after the first one moved on.
	mustActivate(t, s, "dup", t0.Add(time.Hour))
	if err := s.CreateIntent(ctxFor(t), other); !errors.Is(err, ledger.ErrExists) {
		t.Fatalf("CreateIntent over an active record: err = %v, want ErrExists", err)
	}
	if got := mustGet(t, s, "dup"); got.State != ledger.Active {
		t.Errorf("State = %q, want active", got.State)
	}
}

func testGetUnknown(t *testing.T, s ledger.Store) {
	if _, err := s.Get(ctxFor(t), "nope"); !errors.Is(err, ledger.ErrNotFound) {
		t.Fatalf("Get: err = %v, want ErrNotFound", err)
	}
}

func testActivate(t *testing.T, s ledger.Store) {
	r := NewRecord("act", t0, t0.Add(time.Minute))
	r.Attempts, r.LastError = 1, "an earlier reconcile failed"
	mustCreate(t, s, r)
	expires := t0.Add(45 * time.Minute)
	sha := fingerprint.Of("gldt-act")
	if err := s.Activate(ctxFor(t), "act", 777, "gitlab+deploy-token-777", strings.ToUpper(sha), expires); err != nil {
		t.Fatalf("Activate: %v", err)
	}
	want := r
	want.State = ledger.Active
	want.GitLabID = 777
	want.Username = "gitlab+deploy-token-777"
	want.SecretSHA256 = sha
	want.ExpiresAt = expires
	want.NextAttemptAt = expires
	checkRecord(t, mustGet(t, s, "act"), want)
}

func testActivateOnlyFromPending(t *testing.T, s ledger.Store) {
	ctx := ctxFor(t)
	exp := t0.Add(time.Hour)
	sha := fingerprint.Of("z")
	if err := s.Activate(ctx, "unknown", 1, "u", sha, exp); !errors.Is(err, ledger.ErrNotFound) {
		t.Errorf("Activate unknown: err = %v, want ErrNotFound", err)
	}

	mustCreate(t, s, NewRecord("twice", t0, t0))
	mustActivate(t, s, "twice", exp)
	before := mustGet(t, s, "twice")
	if err := s.Activate(ctx, "twice", 2, "other", fingerprint.Of("other"), exp.Add(time.Hour)); !errors.Is(err, ledger.ErrConflict) {
		t.Errorf("second Activate: err = %v, want ErrConflict", err)
	}
	checkRecord(t, mustGet(t, s, "twice"), before)

	mustCreate(t, s, NewRecord("abandoned", t0, t0))
	if err := s.Abandon(ctx, "abandoned", "GitLab refused"); err != nil {
		t.Fatalf("Abandon: %v", err)
	}
	if err := s.Activate(ctx, "abandoned", 1, "u", sha, exp); !errors.Is(err, ledger.ErrConflict) {
		t.Errorf("Activate after Abandon: err = %v, want ErrConflict", err)
	}
	if got := mustGet(t, s, "abandoned"); got.State != ledger.Abandoned || got.SecretSHA256 != "" {
		t.Errorf("after refused Activate: State %q SecretSHA256 %q, want abandoned and empty", got.State, got.SecretSHA256)
	}

	mustCreate(t, s, NewRecord("revoked", t0, t0))
	if err := s.MarkRevoked(ctx, "revoked", t0); err != nil {
		t.Fatalf("MarkRevoked: %v", err)
	}
	if err := s.Activate(ctx, "revoked", 1, "u", sha, exp); !errors.Is(err, ledger.ErrConflict) {
		t.Errorf("Activate after MarkRevoked: err = %v, want ErrConflict", err)
	}
	if got := mustGet(t, s, "revoked"); got.State != ledger.Revoked {
		t.Errorf("State = %q, want revoked", got.State)
	}
}

func testActivateRefusesBadInput(t *testing.T, s ledger.Store) {
	r := NewRecord("act-bad", t0, t0)
	mustCreate(t, s, r)
	tests := []struct {
		name    string
		sha     string
		expires time.Time
	}{
		{"raw secret", "gldt-0123456789abcdefghij", t0.Add(time.Hour)},
		{"not hex", strings.Repeat("g", 64), t0.Add(time.Hour)},
		{"too long", fingerprint.Of("a") + "00", t0.Add(time.Hour)},
		{"empty fingerprint", "", t0.Add(time.Hour)},
		{"zero expiry", fingerprint.Of("a"), time.Time{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := s.Activate(ctxFor(t), r.ID, 1, "u", tc.sha, tc.expires)
			if err == nil {
				t.Fatal("Activate accepted it")
			}
			if errors.Is(err, ledger.ErrConflict) || errors.Is(err, ledger.ErrNotFound) {
				t.Fatalf("Activate: %v, want a validation error", err)
			}
			checkRecord(t, mustGet(t, s, r.ID), r)
		})
	}
}

func testAbandon(t *testing.T, s ledger.Store) {
	ctx := ctxFor(t)
	r := NewRecord("ab", t0, t0.Add(time.Minute))
	mustCreate(t, s, r)
	if err := s.Abandon(ctx, "ab", "reconciled: no token of that name in GitLab"); err != nil {
		t.Fatalf("Abandon: %v", err)
	}
	want := r
	want.State = ledger.Abandoned
	want.LastError = "reconciled: no token of that name in GitLab"
	checkRecord(t, mustGet(t, s, "ab"), want)

	// Idempotent; the first reason stays.
	if err := s.Abandon(ctx, "ab", "another reason"); err != nil {
		t.Errorf("second Abandon: %v", err)
	}
	checkRecord(t, mustGet(t, s, "ab"), want)

	if err := s.Abandon(ctx, "unknown", "x"); !errors.Is(err, ledger.ErrNotFound) {
		t.Errorf("Abandon unknown: err = %v, want ErrNotFound", err)
	}

	mustCreate(t, s, NewRecord("ab-active", t0, t0))
	mustActivate(t, s, "ab-active", t0.Add(time.Hour))
	if err := s.Abandon(ctx, "ab-active", "x"); !errors.Is(err, ledger.ErrConflict) {
		t.Errorf("Abandon active: err = %v, want ErrConflict", err)
	}
	if got := mustGet(t, s, "ab-active"); got.State != ledger.Active || got.LastError != "" {
		t.Errorf("after refused Abandon: State %q LastError %q", got.State, got.LastError)
	}

	mustCreate(t, s, NewRecord("ab-revoked", t0, t0))
	if err := s.MarkRevoked(ctx, "ab-revoked", t0); err != nil {
		t.Fatal(err)
	}
	if err := s.Abandon(ctx, "ab-revoked", "x"); !errors.Is(err, ledger.ErrConflict) {
		t.Errorf("Abandon revoked: err = %v, want ErrConflict", err)
	}
}

func testMarkRevoked(t *testing.T, s ledger.Store) {
	ctx := ctxFor(t)
	r := NewRecord("rv", t0, t0)
	mustCreate(t, s, r)
	sha := mustActivate(t, s, "rv", t0.Add(time.Hour))
	at := t0.Add(time.Hour + 3*time.Second)
	if err := s.MarkRevoked(ctx, "rv", at); err != nil {
		t.Fatalf("MarkRevoked: %v", err)
	}
	got := mustGet(t, s, "rv")
	if got.State != ledger.Revoked {
		t.Errorf("State = %q, want revoked", got.State)
	}
	checkTime(t, "RevokedAt", got.RevokedAt, at)
	if got.SecretSHA256 != sha || got.GitLabID != 4242 {
		t.Errorf("revocation lost the credential's facts: %q %d", got.SecretSHA256, got.GitLabID)
	}

	// Idempotent: the first RevokedAt stays.
	if err := s.MarkRevoked(ctx, "rv", at.Add(time.Hour)); err != nil {
		t.Errorf("second MarkRevoked: %v", err)
	}
	checkTime(t, "RevokedAt after second MarkRevoked", mustGet(t, s, "rv").RevokedAt, at)

	// From Pending (reconciliation found and revoked the token).
	mustCreate(t, s, NewRecord("rv-pending", t0, t0))
	if err := s.MarkRevoked(ctx, "rv-pending", at); err != nil {
		t.Errorf("MarkRevoked pending: %v", err)
	}
	if got := mustGet(t, s, "rv-pending"); got.State != ledger.Revoked {
		t.Errorf("State = %q, want revoked", got.State)
	}

	mustCreate(t, s, NewRecord("rv-abandoned", t0, t0))
	if err := s.Abandon(ctx, "rv-abandoned", "nothing there"); err != nil {
		t.Fatal(err)
	}
	if err := s.MarkRevoked(ctx, "rv-abandoned", at); !errors.Is(err, ledger.ErrConflict) {
		t.Errorf("MarkRevoked abandoned: err = %v, want ErrConflict", err)
	}
	if got := mustGet(t, s, "rv-abandoned"); got.State != ledger.Abandoned || !got.RevokedAt.IsZero() {
		t.Errorf("after refused MarkRevoked: State %q RevokedAt %v", got.State, got.RevokedAt)
	}

	if err := s.MarkRevoked(ctx, "unknown", at); !errors.Is(err, ledger.ErrNotFound) {
		t.Errorf("MarkRevoked unknown: err = %v, want ErrNotFound", err)
	}
}

func testClaimDueOrderLimitLease(t *testing.T, s ledger.Store) {
	ctx := ctxFor(t)
	// Five due records inserted out of order, due at t0+1s … t0+5s.
	for _, i := range []int{3, 1, 5, 2, 4} {
		mustCreate(t, s, NewRecord(fmt.Sprintf("due-%d", i), t0, t0.Add(time.Duration(i)*time.Second)))
	}
	// Two due at the same instant: ordered by id.
	mustCreate(t, s, NewRecord("tie-b", t0, t0.Add(6*time.Second)))
	mustCreate(t, s, NewRecord("tie-a", t0, t0.Add(6*time.Second)))
	// Not due yet.
	mustCreate(t, s, NewRecord("later", t0, t0.Add(time.Hour)))
	// Due, but finished: never claimed.
	mustCreate(t, s, NewRecord("done-revoked", t0, t0))
	if err := s.MarkRevoked(ctx, "done-revoked", t0); err != nil {
		t.Fatal(err)
	}
	mustCreate(t, s, NewRecord("done-abandoned", t0, t0))
	if err := s.Abandon(ctx, "done-abandoned", "x"); err != nil {
		t.Fatal(err)
	}

	now := t0.Add(10 * time.Second)
	lease := time.Minute
	claim := func(now time.Time, limit int) []ledger.Record {
		t.Helper()
		rs, err := s.ClaimDue(ctx, now, lease, limit)
		if err != nil {
			t.Fatalf("ClaimDue: %v", err)
		}
		return rs
	}

	first := claim(now, 3)
	if got, want := ids(first), []string{"due-1", "due-2", "due-3"}; !slices.Equal(got, want) {
		t.Fatalf("first claim = %q, want %q", got, want)
	}
	for _, r := range first {
		if r.State != ledger.Pending {
			t.Errorf("%s: State = %q, want pending", r.ID, r.State)
		}
		checkTime(t, r.ID+" NextAttemptAt", r.NextAttemptAt, now.Add(lease))
		checkTime(t, r.ID+" stored NextAttemptAt", mustGet(t, s, r.ID).NextAttemptAt, now.Add(lease))
		if r.Rule != "app-reads-libs" || !slices.Equal(r.Scopes, []string{"read_repository", "read_registry"}) {
			t.Errorf("%s: claimed record incomplete: %+v", r.ID, r)
		}
	}

	second := claim(now, 10)
	if got, want := ids(second), []string{"due-4", "due-5", "tie-a", "tie-b"}; !slices.Equal(got, want) {
		t.Fatalf("second claim = %q, want %q", got, want)
	}
	// Everything due is under a lease now.
	if rs := claim(now, 10); len(rs) != 0 {
		t.Fatalf("third claim = %q, want none", ids(rs))
	}
	// Just before the leases end: still none.
	if rs := claim(now.Add(lease-time.Millisecond), 10); len(rs) != 0 {
		t.Fatalf("claim before lease end = %q, want none", ids(rs))
	}
	// When the first leases end those records come back (a reaper died
	// holding them), the second batch's leases too: all ended at the same time.
	after := claim(now.Add(lease), 100)
	if got, want := ids(after), []string{"due-1", "due-2", "due-3", "due-4", "due-5", "tie-a", "tie-b"}; !slices.Equal(got, want) {
		t.Fatalf("claim after lease = %q, want %q", got, want)
	}
	// Far in the future: "later" is due too, the finished ones never.
	far := claim(t0.Add(24*time.Hour), 100)
	if got, want := ids(far), []string{"due-1", "due-2", "due-3", "due-4", "due-5", "tie-a", "tie-b", "later"}; !slices.Equal(got, want) {
		t.Fatalf("far-future claim = %q, want %q", got, want)
	}
}

func testClaimDueActiveAtRevocationTime(t *testing.T, s ledger.Store) {
	ctx := ctxFor(t)
	mustCreate(t, s, NewRecord("live", t0, t0.Add(time.Minute)))
	revokeAt := t0.Add(time.Hour)
	mustActivate(t, s, "live", revokeAt)

	// The mint lease no longer matters once Active.
	if rs, err := s.ClaimDue(ctx, t0.Add(2*time.Minute), time.Minute, 10); err != nil || len(rs) != 0 {
		t.Fatalf("ClaimDue before revocation time = %q, %v; want none", ids(rs), err)
	}
	rs, err := s.ClaimDue(ctx, revokeAt, time.Minute, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != 1 || rs[0].ID != "live" || rs[0].State != ledger.Active || rs[0].GitLabID != 4242 {
		t.Fatalf("ClaimDue at revocation time = %+v, want the active record", rs)
	}
	if err := s.MarkRevoked(ctx, "live", revokeAt); err != nil {
		t.Fatal(err)
	}
	if rs, err := s.ClaimDue(ctx, revokeAt.Add(time.Hour), time.Minute, 10); err != nil || len(rs) != 0 {
		t.Fatalf("ClaimDue after revocation = %q, %v; want none", ids(rs), err)
	}
}

func testClaimDueRefusesBadInput(t *testing.T, s ledger.Store) {
	ctx := ctxFor(t)
	mustCreate(t, s, NewRecord("c", t0, t0))
	for _, tc := range []struct {
		name  string
		lease time.Duration
		limit int
	}{
		{"zero limit", time.Minute, 0},
		{"negative limit", time.Minute, -1},
		{"zero lease", 0, 10},
		{"negative lease", -time.Second, 10},
	} {
		if _, err := s.ClaimDue(ctx, t0.Add(time.Hour), tc.lease, tc.limit); err == nil {
			t.Errorf("%s: ClaimDue accepted it", tc.name)
		}
	}
	checkTime(t, "NextAttemptAt", mustGet(t, s, "c").NextAttemptAt, t0)
}

func testReleaseClaims(t *testing.T, s ledger.Store) {
	ctx := ctxFor(t)
	exp := t0.Add(time.Hour)
	for _, id := range []string{"backedoff", "claimed", "notyet"} {
		mustCreate(t, s, NewRecord(id, t0, t0.Add(2*time.Minute)))
		mustActivate(t, s, id, exp)
	}
	mustCreate(t, s, NewRecord("pending", t0, exp.Add(time.Hour)))
	// "backedoff" failed and waits; a reaper then claims "claimed" with a
	// long lease and dies; "notyet" is untouched.
	if err := s.RetryLater(ctx, "backedoff", exp.Add(time.Hour), "502"); err != nil {
		t.Fatal(err)
	}
	if rs, err := s.ClaimDue(ctx, exp, 10*time.Minute, 1); err != nil || len(rs) != 1 || rs[0].ID != "claimed" {
		t.Fatalf("ClaimDue = %q, %v", ids(rs), err)
	}
	n, err := s.ReleaseClaims(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n != 2 {
		t.Errorf("ReleaseClaims = %d, want 2", n)
	}
	for _, id := range []string{"claimed", "backedoff", "notyet"} {
		checkTime(t, id+" NextAttemptAt", mustGet(t, s, id).NextAttemptAt, exp)
	}
	checkTime(t, "pending NextAttemptAt", mustGet(t, s, "pending").NextAttemptAt, exp.Add(time.Hour))
	if rs, _ := s.ClaimDue(ctx, exp, time.Minute, 10); len(rs) != 3 {
		t.Errorf("after ReleaseClaims, due at the TTL: %q, want three", ids(rs))
	}
}

func testRetryLater(t *testing.T, s ledger.Store) {
	ctx := ctxFor(t)
	mustCreate(t, s, NewRecord("retry", t0, t0))
	mustActivate(t, s, "retry", t0.Add(time.Hour))
	for i := 1; i <= 3; i++ {
		next := t0.Add(time.Hour + time.Duration(i)*time.Minute)
		msg := fmt.Sprintf("revoke: GitLab 502 (try %d)", i)
		if err := s.RetryLater(ctx, "retry", next, msg); err != nil {
			t.Fatalf("RetryLater %d: %v", i, err)
		}
		got := mustGet(t, s, "retry")
		if got.Attempts != i || got.LastError != msg || got.State != ledger.Active {
			t.Errorf("after %d: Attempts %d LastError %q State %q", i, got.Attempts, got.LastError, got.State)
		}
		checkTime(t, "NextAttemptAt", got.NextAttemptAt, next)
	}
	// Not due before next, due after.
	last := t0.Add(time.Hour + 3*time.Minute)
	if rs, _ := s.ClaimDue(ctx, last.Add(-time.Second), time.Minute, 10); len(rs) != 0 {
		t.Errorf("claimed before NextAttemptAt: %q", ids(rs))
	}
	if rs, _ := s.ClaimDue(ctx, last, time.Minute, 10); len(rs) != 1 || rs[0].Attempts != 3 {
		t.Errorf("claim at NextAttemptAt = %+v, want the record with 3 attempts", rs)
	}

	// Pending records count attempts too.
	mustCreate(t, s, NewRecord("retry-pending", t0, t0))
	if err := s.RetryLater(ctx, "retry-pending", t0.Add(time.Minute), "find by name: 503"); err != nil {
		t.Fatal(err)
	}
	if got := mustGet(t, s, "retry-pending"); got.Attempts != 1 || got.State != ledger.Pending {
		t.Errorf("pending retry: Attempts %d State %q", got.Attempts, got.State)
	}

	if err := s.RetryLater(ctx, "unknown", t0, "x"); !errors.Is(err, ledger.ErrNotFound) {
		t.Errorf("RetryLater unknown: err = %v, want ErrNotFound", err)
	}
	if err := s.RetryLater(ctx, "retry", time.Time{}, "x"); err == nil || errors.Is(err, ledger.ErrNotFound) || errors.Is(err, ledger.ErrConflict) {
		t.Errorf("RetryLater with zero next: err = %v, want a validation error", err)
	}
	if err := s.MarkRevoked(ctx, "retry", last); err != nil {
		t.Fatal(err)
	}
	if err := s.RetryLater(ctx, "retry", last.Add(time.Hour), "x"); !errors.Is(err, ledger.ErrConflict) {
		t.Errorf("RetryLater revoked: err = %v, want ErrConflict", err)
	}
	if got := mustGet(t, s, "retry"); got.Attempts != 3 || got.State != ledger.Revoked {
		t.Errorf("after refused RetryLater: Attempts %d State %q", got.Attempts, got.State)
	}
	mustCreate(t, s, NewRecord("retry-abandoned", t0, t0))
	if err := s.Abandon(ctx, "retry-abandoned", "gone"); err != nil {
		t.Fatal(err)
	}
	if err := s.RetryLater(ctx, "retry-abandoned", t0, "x"); !errors.Is(err, ledger.ErrConflict) {
		t.Errorf("RetryLater abandoned: err = %v, want ErrConflict", err)
	}
}

func testErrorTextSanitized(t *testing.T, s ledger.Store) {
	ctx := ctxFor(t)
	mustCreate(t, s, NewRecord("san", t0, t0))
	check := func(name, in string) {
		t.Helper()
		got := mustGet(t, s, "san").LastError
		if !utf8.ValidString(got) || strings.ContainsRune(got, 0) || len(got) > maxErrorLen {
			t.Errorf("%s: LastError %q is not clean UTF-8 of at most %d bytes", name, got, maxErrorLen)
		}
		if in != "" && !strings.HasPrefix(got, in[:3]) {
			t.Errorf("%s: LastError %q lost its start %q", name, got, in[:3])
		}
	}
	for _, tc := range []struct{ name, msg string }{
		{"invalid utf8", "oops \xff\xfe bytes"},
		{"nul", "nul\x00byte"},
		{"long", strings.Repeat("é", 3000)},
	} {
		if err := s.RetryLater(ctx, "san", t0, tc.msg); err != nil {
			t.Fatalf("%s: RetryLater: %v", tc.name, err)
		}
		check(tc.name, tc.msg)
	}
	exact := strings.Repeat("x", maxErrorLen)
	if err := s.RetryLater(ctx, "san", t0, exact); err != nil {
		t.Fatal(err)
	}
	if got := mustGet(t, s, "san").LastError; got != exact {
		t.Errorf("a %d-byte error was changed (to %d bytes)", maxErrorLen, len(got))
	}
	mustCreate(t, s, NewRecord("san-ab", t0, t0))
	if err := s.Abandon(ctx, "san-ab", "GitLab \x00said \xff no"); err != nil {
		t.Fatalf("Abandon: %v", err)
	}
	if got := mustGet(t, s, "san-ab").LastError; !utf8.ValidString(got) || strings.ContainsRune(got, 0) {
		t.Errorf("Abandon reason %q is not clean", got)
	}
}

func testFindBySecret(t *testing.T, s ledger.Store) {
	ctx := ctxFor(t)
	mustCreate(t, s, NewRecord("fs-pending", t0, t0))
	mustCreate(t, s, NewRecord("fs-a", t0, t0))
	mustCreate(t, s, NewRecord("fs-b", t0, t0))
	shaA := mustActivate(t, s, "fs-a", t0.Add(time.Hour))
	shaB := mustActivate(t, s, "fs-b", t0.Add(time.Hour))

	for _, tc := range []struct{ sha, want string }{
		{shaA, "fs-a"},
		{shaB, "fs-b"},
		{strings.ToUpper(shaA), "fs-a"},
	} {
		r, err := s.FindBySecret(ctx, tc.sha)
		if err != nil {
			t.Fatalf("FindBySecret(%s): %v", tc.sha, err)
		}
		if r.ID != tc.want || r.State != ledger.Active || r.SecretSHA256 != strings.ToLower(tc.sha) {
			t.Errorf("FindBySecret(%s) = %s %s, want %s active", tc.sha, r.ID, r.State, tc.want)
		}
	}
	// Found in any state: a revoke request for a revoked token is answered.
	if err := s.MarkRevoked(ctx, "fs-a", t0.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if r, err := s.FindBySecret(ctx, shaA); err != nil || r.ID != "fs-a" || r.State != ledger.Revoked {
		t.Errorf("FindBySecret after revocation = %s %s, %v", r.ID, r.State, err)
	}
	for _, sha := range []string{"", fingerprint.Of("unknown"), "not-a-fingerprint"} {
		if _, err := s.FindBySecret(ctx, sha); !errors.Is(err, ledger.ErrNotFound) {
			t.Errorf("FindBySecret(%q): err = %v, want ErrNotFound", sha, err)
		}
	}
}

func testListPending(t *testing.T, s ledger.Store) {
	ctx := ctxFor(t)
	if rs, err := s.ListPending(ctx); err != nil || len(rs) != 0 {
		t.Fatalf("ListPending on empty store = %q, %v", ids(rs), err)
	}
	mustCreate(t, s, NewRecord("p3", t0.Add(3*time.Second), t0))
	mustCreate(t, s, NewRecord("p1", t0.Add(1*time.Second), t0.Add(time.Hour)))
	mustCreate(t, s, NewRecord("act", t0, t0))
	mustActivate(t, s, "act", t0.Add(time.Hour))
	mustCreate(t, s, NewRecord("p2", t0.Add(2*time.Second), t0))
	mustCreate(t, s, NewRecord("ab", t0, t0))
	if err := s.Abandon(ctx, "ab", "x"); err != nil {
		t.Fatal(err)
	}
	mustCreate(t, s, NewRecord("rv", t0, t0))
	if err := s.MarkRevoked(ctx, "rv", t0); err != nil {
		t.Fatal(err)
	}
	// A claimed intent is still pending.
	if _, err := s.ClaimDue(ctx, t0.Add(time.Minute), time.Hour, 1); err != nil {
		t.Fatal(err)
	}
	rs, err := s.ListPending(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := ids(rs), []string{"p1", "p2", "p3"}; !slices.Equal(got, want) {
		t.Fatalf("ListPending = %q, want %q", got, want)
	}
	want := NewRecord("p1", t0.Add(1*time.Second), t0.Add(time.Hour))
	checkRecord(t, rs[0], want)
}

func testCountActive(t *testing.T, s ledger.Store) {
	ctx := ctxFor(t)
	count := func() int {
		t.Helper()
		n, err := s.CountActive(ctx)
		if err != nil {
			t.Fatalf("CountActive: %v", err)
		}
		return n
	}
	if n := count(); n != 0 {
		t.Fatalf("CountActive on empty store = %d", n)
	}
	for i := range 4 {
		mustCreate(t, s, NewRecord(fmt.Sprintf("ca-%d", i), t0, t0))
	}
	mustActivate(t, s, "ca-0", t0.Add(time.Hour))
	mustActivate(t, s, "ca-1", t0.Add(time.Hour))
	mustActivate(t, s, "ca-2", t0.Add(time.Hour))
	if n := count(); n != 3 {
		t.Errorf("CountActive = %d, want 3", n)
	}
	if err := s.MarkRevoked(ctx, "ca-1", t0); err != nil {
		t.Fatal(err)
	}
	if n := count(); n != 2 {
		t.Errorf("CountActive after a revocation = %d, want 2", n)
	}
}

func testCanceledContext(t *testing.T, s ledger.Store) {
	ctx, cancel := context.WithCancel(ctxFor(t))
	cancel()
	r := NewRecord("cc", t0, t0)
	if err := s.CreateIntent(ctx, r); err == nil {
		t.Error("CreateIntent with a canceled context succeeded")
	}
	if _, err := s.Get(ctxFor(t), "cc"); !errors.Is(err, ledger.ErrNotFound) {
		t.Errorf("Get after canceled CreateIntent: err = %v, want ErrNotFound", err)
	}
	mustCreate(t, s, r)
	if _, err := s.Get(ctx, "cc"); err == nil {
		t.Error("Get with a canceled context succeeded")
	}
	if _, err := s.ClaimDue(ctx, t0, time.Minute, 1); err == nil {
		t.Error("ClaimDue with a canceled context succeeded")
	}
	if err := s.Ping(ctx); err == nil {
		t.Error("Ping with a canceled context succeeded")
	}
	checkTime(t, "NextAttemptAt", mustGet(t, s, "cc").NextAttemptAt, t0)
}

func testSeesOtherInstancesWrites(t *testing.T, a, b ledger.Store) {
	ctx := ctxFor(t)
	mustCreate(t, a, NewRecord("shared", t0, t0))
	if err := b.CreateIntent(ctx, NewRecord("shared", t0, t0)); !errors.Is(err, ledger.ErrExists) {
		t.Errorf("CreateIntent on b: err = %v, want ErrExists", err)
	}
	sha := mustActivate(t, b, "shared", t0.Add(time.Hour))
	if got := mustGet(t, a, "shared"); got.State != ledger.Active || got.SecretSHA256 != sha {
		t.Errorf("a sees State %q SecretSHA256 %q after b activated", got.State, got.SecretSHA256)
	}
	rs, err := a.ClaimDue(ctx, t0.Add(time.Hour), time.Minute, 10)
	if err != nil || len(rs) != 1 {
		t.Fatalf("ClaimDue on a = %q, %v", ids(rs), err)
	}
	if rs, err := b.ClaimDue(ctx, t0.Add(time.Hour), time.Minute, 10); err != nil || len(rs) != 0 {
		t.Fatalf("ClaimDue on b during a's lease = %q, %v; want none", ids(rs), err)
	}
	if err := b.MarkRevoked(ctx, "shared", t0.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if n, err := a.CountActive(ctx); err != nil || n != 0 {
		t.Errorf("CountActive on a = %d, %v; want 0", n, err)
	}
}

// testConcurrentClaimDue races claimers, spread over a and b, for due
// records: every record must be handed out exactly once within a lease. The
// claimers start each round together (to make their claims overlap as much
// as possible), then drain what is left; all claims use the same now, so no
// lease ends during the test.
func testConcurrentClaimDue(t *testing.T, a, b ledger.Store) {
	const (
		rounds   = 12
		perRound = 24
		claimers = 8
		limit    = 5
	)
	now := t0.Add(time.Hour)
	claimed := map[string]int{}
	for round := range rounds {
		for i := range perRound {
			r := NewRecord(fmt.Sprintf("cc-%02d-%02d", round, i), t0, t0.Add(time.Duration(rand.IntN(1000))*time.Millisecond))
			s := a
			if i%2 == 1 {
				s = b
			}
			mustCreate(t, s, r)
			if i%3 == 0 {
				mustActivate(t, s, r.ID, t0.Add(time.Duration(rand.IntN(1000))*time.Millisecond))
			}
		}
		var (
			mu   sync.Mutex
			wg   sync.WaitGroup
			errs []error
		)
		start := make(chan struct{})
		for g := range claimers {
			s := a
			if g%2 == 1 {
				s = b
			}
			wg.Go(func() {
				<-start
				for {
					rs, err := s.ClaimDue(context.Background(), now, time.Hour, limit)
					mu.Lock()
					if err == nil && len(rs) > limit {
						err = fmt.Errorf("ClaimDue returned %d records, limit %d", len(rs), limit)
					}
					if err != nil {
						errs = append(errs, err)
					}
					for _, r := range rs {
						claimed[r.ID]++
					}
					mu.Unlock()
					if err != nil || len(rs) == 0 {
						return
					}
				}
			})
		}
		close(start)
		wg.Wait()
		for _, err := range errs {
			t.Errorf("round %d: claimer: %v", round, err)
		}
	}
	if len(claimed) != rounds*perRound {
		t.Errorf("%d distinct records claimed, want %d", len(claimed), rounds*perRound)
	}
	for id, n := range claimed {
		if n != 1 {
			t.Errorf("%s claimed %d times within one lease", id, n)
		}
	}
}

// testConcurrentCreateSameID: of many writers of one id, exactly one wins.
func testConcurrentCreateSameID(t *testing.T, a, b ledger.Store) {
	const writers = 8
	var (
		wg              sync.WaitGroup
		mu              sync.Mutex
		ok, exists      int
		unexpectedError []error
	)
	for g := range writers {
		s := a
		if g%2 == 1 {
			s = b
		}
		wg.Go(func() {
			r := NewRecord("same", t0, t0)
			r.Rule = fmt.Sprintf("writer-%d", g)
			err := s.CreateIntent(context.Background(), r)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				ok++
			case errors.Is(err, ledger.ErrExists):
				exists++
			default:
				unexpectedError = append(unexpectedError, err)
			}
		})
	}
	wg.Wait()
	for _, err := range unexpectedError {
		t.Errorf("CreateIntent: %v", err)
	}
	if ok != 1 || exists != writers-1 {
		t.Errorf("%d created, %d ErrExists; want 1 and %d", ok, exists, writers-1)
	}
}

// testConcurrentActivateAbandon: the exchange activating an intent while a
// reaper abandons it: exactly one wins, the other gets ErrConflict, and the
// stored state is the winner's.
func testConcurrentActivateAbandon(t *testing.T, a, b ledger.Store) {
	const rounds = 20
	for i := range rounds {
		id := fmt.Sprintf("race-%d", i)
		mustCreate(t, a, NewRecord(id, t0, t0))
		var actErr, abErr error
		var wg sync.WaitGroup
		wg.Go(func() {
			actErr = a.Activate(context.Background(), id, 1, "u", fingerprint.Of(id), t0.Add(time.Hour))
		})
		wg.Go(func() { abErr = b.Abandon(context.Background(), id, "reconciled: nothing there") })
		wg.Wait()
		got := mustGet(t, a, id)
		switch {
		case actErr == nil && errors.Is(abErr, ledger.ErrConflict):
			if got.State != ledger.Active {
				t.Errorf("%s: Activate won but State = %q", id, got.State)
			}
		case abErr == nil && errors.Is(actErr, ledger.ErrConflict):
			if got.State != ledger.Abandoned || got.SecretSHA256 != "" {
				t.Errorf("%s: Abandon won but State = %q, SecretSHA256 %q", id, got.State, got.SecretSHA256)
			}
		default:
			t.Errorf("%s: Activate: %v, Abandon: %v; want exactly one ErrConflict", id, actErr, abErr)
		}
	}
}

func testPingClose(t *testing.T, s ledger.Store) {
	ctx := ctxFor(t)
	if err := s.Ping(ctx); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := s.Ping(ctx); err == nil {
		t.Error("Ping after Close succeeded")
	}
	if _, err := s.Get(ctx, "x"); err == nil || errors.Is(err, ledger.ErrNotFound) {
		t.Errorf("Get after Close: err = %v, want a closed-store error", err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// BenchCreateActivate measures the exchange's ledger round trip: write an
// intent, then activate it.
func BenchCreateActivate(b *testing.B, s ledger.Store) {
	ctx := context.Background()
	sha := fingerprint.Of("bench")
	exp := t0.Add(time.Hour)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		id := fmt.Sprintf("bench-%d", i)
		i++
		if err := s.CreateIntent(ctx, NewRecord(id, t0, t0.Add(time.Minute))); err != nil {
			b.Fatal(err)
		}
		if err := s.Activate(ctx, id, int64(i), "gitlab+deploy-token-1", sha, exp); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchClaimDue measures a reaper's claim of a batch of 100 from a ledger
// of 2,000 due records (each claim's lease ends before the next claim).
func BenchClaimDue(b *testing.B, s ledger.Store) {
	ctx := context.Background()
	const records, batch = 2000, 100
	for i := range records {
		id := fmt.Sprintf("bench-%05d", i)
		if err := s.CreateIntent(ctx, NewRecord(id, t0, t0)); err != nil {
			b.Fatal(err)
		}
		if err := s.Activate(ctx, id, int64(i), "u", fingerprint.Of(id), t0.Add(time.Duration(i)*time.Millisecond)); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	now := t0.Add(time.Hour)
	for b.Loop() {
		now = now.Add(time.Second)
		rs, err := s.ClaimDue(ctx, now, 500*time.Millisecond, batch)
		if err != nil {
			b.Fatal(err)
		}
		if len(rs) != batch {
			b.Fatalf("claimed %d, want %d", len(rs), batch)
		}
	}
}
