package exchange

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"gltoken.dev/gltoken/internal/fingerprint"
	"gltoken.dev/gltoken/internal/idtoken"
	"gltoken.dev/gltoken/internal/ledger"
	"gltoken.dev/gltoken/internal/policy"
	"gltoken.dev/gltoken/internal/sqlite"
)

const testPolicy = `
rules:
  - name: app-reads-libs
    match:
      project_path: platform/app
      ref_protected: "true"
    allow:
      projects: [platform/lib, "platform/libs/**"]
      scopes: [read_repository, read_registry]
      ttl: 1h
  - name: app-pushes-deploy
    match:
      project_path: platform/app
      ref: main
    allow:
      projects: [platform/deploy]
      scopes: [read_repository, write_repository]
      ttl: 30m
      access_level: developer
  - name: tools-group
    match:
      project_path: platform/app
    allow:
      groups: [platform/tools]
      scopes: [read_repository]
  - name: app-reads-api
    match:
      project_path: platform/app
    allow:
      projects: [platform/api]
      scopes: [read_api]
      ttl: 10m
`

// fakeVerifier accepts tokens named in its map.
type fakeVerifier struct{ tokens map[string]*idtoken.Token }

func (f *fakeVerifier) Verify(_ context.Context, raw string) (*idtoken.Token, error) {
	if t, ok := f.tokens[raw]; ok {
		return t, nil
	}
	return nil, fmt.Errorf("%w: unknown test token", idtoken.ErrSignature)
}

// fakeMinter records what it is asked and can be told to fail.
type fakeMinter struct {
	mu       sync.Mutex
	nextID   int64
	live     map[string]Credential // by name
	owners   map[string]int64      // path -> id, as ResolveOwner made them up
	revoked  []int64
	mints    atomic.Int32
	last     MintRequest // the last request Mint was given
	failNext error
	// createThenFail: the create happens but the answer is "lost".
	createThenFail bool
	block          chan struct{}
}

var _ Minter = (*fakeMinter)(nil)

func newFakeMinter() *fakeMinter { return &fakeMinter{live: map[string]Credential{}} }

// ResolveOwner knows every path but "platform/libs/moved", which GitLab would
// only find through a redirect; each path gets an id of its own.
func (f *fakeMinter) ResolveOwner(ctx context.Context, kind ledger.Kind, path string) (int64, error) {
	if path == "platform/libs/moved" {
		return 0, fmt.Errorf("%w: known as other/moved", ErrNotFound)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.owners == nil {
		f.owners = map[string]int64{}
	}
	if _, ok := f.owners[path]; !ok {
		f.owners[path] = int64(1000 + len(f.owners))
	}
	return f.owners[path], nil
}

func (f *fakeMinter) Mint(ctx context.Context, req MintRequest) (Credential, error) {
	f.mints.Add(1)
	if f.block != nil {
		<-f.block
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.last = req
	if err := f.failNext; err != nil {
		f.failNext = nil
		return Credential{}, err
	}
	f.nextID++
	c := Credential{Kind: req.Kind, Owner: req.Owner, OwnerPath: req.OwnerPath, GitLabID: f.nextID, Name: req.Name,
		Username: fmt.Sprintf("gitlab+deploy-token-%d", f.nextID), Secret: fmt.Sprintf("gldt-secret-%d", f.nextID), ExpiresAt: req.ExpiresAt}
	f.live[req.Name] = c
	if f.createThenFail {
		f.createThenFail = false
		return Credential{}, fmt.Errorf("%w: connection reset", ErrAmbiguous)
	}
	return c, nil
}

func (f *fakeMinter) FindByName(ctx context.Context, kind ledger.Kind, owner int64, name string) (TokenRef, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	c, ok := f.live[name]
	if !ok {
		return TokenRef{}, false, nil
	}
	return TokenRef{Kind: c.Kind, Owner: c.Owner, GitLabID: c.GitLabID}, true, nil
}

func (f *fakeMinter) Revoke(ctx context.Context, ref TokenRef) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for n, c := range f.live {
		if c.GitLabID == ref.GitLabID {
			delete(f.live, n)
		}
	}
	f.revoked = append(f.revoked, ref.GitLabID)
	return nil
}

func (f *fakeMinter) liveCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.live)
}

type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

type fixture struct {
	svc    *Service
	minter *fakeMinter
	store  ledger.Store
	clock  *clock
	ver    *fakeVerifier
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	return newFixtureWith(t, testPolicy, nil)
}

// newFixtureWith builds the fixture on another policy, with the audit
// events going to audit (nil: discarded with the log).
func newFixtureWith(t *testing.T, policyText string, audit *slog.Logger) *fixture {
	t.Helper()
	pol, err := policy.Parse([]byte(policyText), "policy.yaml", policy.Options{GitLabURL: "https://gitlab.example.com"})
	if err != nil {
		t.Fatal(err)
	}
	store, err := sqlite.Open(context.Background(), t.TempDir()+"/state.db")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	clk := &clock{now: time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)}
	claims := map[string]string{"project_path": "platform/app", "project_id": "7", "ref": "main", "ref_protected": "true", "pipeline_id": "11", "job_id": "12"}
	unprotected := map[string]string{"project_path": "platform/app", "project_id": "7", "ref": "feature", "ref_protected": "false"}
	ver := &fakeVerifier{tokens: map[string]*idtoken.Token{
		"job-token": {Issuer: "https://gitlab.example.com", Subject: "project_path:platform/app:ref_type:branch:ref:main", ID: "jti-1",
			IssuedAt: clk.now, Expiry: clk.now.Add(2 * time.Hour), Claims: claims},
		"short-token": {Issuer: "https://gitlab.example.com", Subject: "s", ID: "jti-2",
			IssuedAt: clk.now, Expiry: clk.now.Add(20 * time.Minute), Claims: claims},
		"dying-token": {Issuer: "https://gitlab.example.com", Subject: "s", ID: "jti-3",
			IssuedAt: clk.now, Expiry: clk.now.Add(5 * time.Second), Claims: claims},
		"feature-token": {Issuer: "https://gitlab.example.com", Subject: "s", ID: "jti-4",
			IssuedAt: clk.now, Expiry: clk.now.Add(time.Hour), Claims: unprotected},
	}}
	m := newFakeMinter()
	svc, err := New(Config{GitLabURL: "https://gitlab.example.com", RegistryURL: "https://registry.example.com",
		MaxTTL: 12 * time.Hour, Now: clk.Now, Logger: slog.New(slog.DiscardHandler), Audit: audit},
		ver, func() *policy.Policy { return pol }, m, store)
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{svc: svc, minter: m, store: store, clock: clk, ver: ver}
}

func (f *fixture) exchange(tok, resource string, scopes ...string) (*Issued, error) {
	return f.svc.Exchange(context.Background(), Request{RequestID: "r1", SubjectToken: tok, Resources: []string{resource}, Scopes: scopes})
}

func TestExchangeDecisions(t *testing.T) {
	tests := []struct {
		name     string
		token    string
		resource string
		scopes   []string
		wantCode string
		wantKind ledger.Kind
		wantLife time.Duration
	}{
		{name: "read a lib", token: "job-token", resource: "https://gitlab.example.com/platform/lib.git", scopes: []string{"read_repository"}, wantKind: ledger.ProjectDeployToken, wantLife: time.Hour},
		{name: "read under **", token: "job-token", resource: "https://gitlab.example.com/platform/libs/a/b", scopes: []string{"read_repository"}, wantKind: ledger.ProjectDeployToken, wantLife: time.Hour},
		{name: "registry read", token: "job-token", resource: "https://registry.example.com/platform/lib", scopes: []string{"read_registry"}, wantKind: ledger.ProjectDeployToken, wantLife: time.Hour},
		{name: "push gets an access token", token: "job-token", resource: "https://gitlab.example.com/platform/deploy.git", scopes: []string{"write_repository"}, wantKind: ledger.ProjectAccessToken, wantLife: 30 * time.Minute},
		{name: "group deploy token", token: "job-token", resource: "https://gitlab.example.com/platform/tools/x.git", scopes: []string{"read_repository"}, wantKind: ledger.GroupDeployToken, wantLife: time.Hour},
		{name: "lifetime capped by the ID token", token: "short-token", resource: "https://gitlab.example.com/platform/lib.git", scopes: []string{"read_repository"}, wantKind: ledger.ProjectDeployToken, wantLife: 20 * time.Minute},
		{name: "ID token about to expire", token: "dying-token", resource: "https://gitlab.example.com/platform/lib.git", scopes: []string{"read_repository"}, wantCode: CodeInvalidGrant},
		{name: "bad token", token: "forged", resource: "https://gitlab.example.com/platform/lib.git", scopes: []string{"read_repository"}, wantCode: CodeInvalidGrant},
		{name: "not allowed project", token: "job-token", resource: "https://gitlab.example.com/platform/secret.git", scopes: []string{"read_repository"}, wantCode: CodeInvalidTarget},
		{name: "unprotected ref", token: "feature-token", resource: "https://gitlab.example.com/platform/lib.git", scopes: []string{"read_repository"}, wantCode: CodeInvalidTarget},
		{name: "scope not granted", token: "job-token", resource: "https://gitlab.example.com/platform/lib.git", scopes: []string{"write_repository"}, wantCode: CodeInvalidScope},
		{name: "unknown scope", token: "job-token", resource: "https://gitlab.example.com/platform/lib.git", scopes: []string{"sudo"}, wantCode: CodeInvalidScope},
		{name: "no scope", token: "job-token", resource: "https://gitlab.example.com/platform/lib.git", wantCode: CodeInvalidScope},
		{name: "repo scope on registry", token: "job-token", resource: "https://registry.example.com/platform/lib", scopes: []string{"read_repository"}, wantCode: CodeInvalidScope},
		{name: "foreign host", token: "job-token", resource: "https://evil.example.com/platform/lib.git", scopes: []string{"read_repository"}, wantCode: CodeInvalidTarget},
		{name: "other scheme", token: "job-token", resource: "http://gitlab.example.com/platform/lib.git", scopes: []string{"read_repository"}, wantCode: CodeInvalidTarget},
		{name: "dot dot", token: "job-token", resource: "https://gitlab.example.com/platform/libs/../secret", scopes: []string{"read_repository"}, wantCode: CodeInvalidTarget},
		{name: "encoded path", token: "job-token", resource: "https://gitlab.example.com/platform%2Flib", scopes: []string{"read_repository"}, wantCode: CodeInvalidTarget},
		{name: "credentials in URL", token: "job-token", resource: "https://u:p@gitlab.example.com/platform/lib", scopes: []string{"read_repository"}, wantCode: CodeInvalidTarget},
		{name: "no project", token: "job-token", resource: "https://gitlab.example.com/platform", scopes: []string{"read_repository"}, wantCode: CodeInvalidTarget},
		{name: "no resource", token: "job-token", resource: "", scopes: []string{"read_repository"}, wantCode: CodeInvalidRequest},
		{name: "relative", token: "job-token", resource: "platform/lib", scopes: []string{"read_repository"}, wantCode: CodeInvalidTarget},
		{name: "path GitLab only redirects", token: "job-token", resource: "https://gitlab.example.com/platform/libs/moved", scopes: []string{"read_repository"}, wantCode: CodeInvalidTarget},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			granted, err := f.exchange(tt.token, tt.resource, tt.scopes...)
			if tt.wantCode != "" {
				var e *Error
				if !errors.As(err, &e) || e.Code != tt.wantCode {
					t.Fatalf("err = %v, want code %s", err, tt.wantCode)
				}
				if f.minter.mints.Load() != 0 {
					t.Fatalf("a refused request minted %d credentials", f.minter.mints.Load())
				}
				if strings.Contains(e.Description, tt.token) && tt.token != "" {
					t.Fatalf("error echoes the subject token: %q", e.Description)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if granted.Kind != tt.wantKind {
				t.Errorf("kind = %s, want %s", granted.Kind, tt.wantKind)
			}
			if got := granted.ExpiresAt.Sub(f.clock.Now()); got != tt.wantLife {
				t.Errorf("lifetime = %s, want %s", got, tt.wantLife)
			}
			rec, err := f.store.Get(context.Background(), granted.LedgerID)
			if err != nil {
				t.Fatal(err)
			}
			if rec.State != ledger.Active || rec.SecretSHA256 != fingerprint.Of(granted.AccessToken) || !rec.ExpiresAt.Equal(granted.ExpiresAt) {
				t.Errorf("ledger record = %+v", rec)
			}
		})
	}
}

func TestAuditNeverShowsSecretsOfRefusedResources(t *testing.T) {
	f := newFixture(t)
	var logs strings.Builder
	f.svc.cfg.Audit = slog.New(slog.NewJSONHandler(&logs, nil))
	for _, res := range []string{
		"https://oauth2:glpat-leak1@gitlab.example.com/platform/lib.git",
		"https://gitlab.example.com/platform/lib.git?private_token=glpat-leak2",
		"glpat-leak3",
		"https://gitlab.example.com/platform/lib.git#glpat-leak4",
	} {
		if _, err := f.exchange("job-token", res, "read_repository"); err == nil {
			t.Fatalf("%s was accepted", res)
		}
	}
	if strings.Contains(logs.String(), "leak") {
		t.Fatalf("audit log shows a secret from a refused resource:\n%s", logs.String())
	}
}

func TestExchangeCachesOneCredentialPerRequest(t *testing.T) {
	f := newFixture(t)
	f.minter.block = make(chan struct{})
	var wg sync.WaitGroup
	results := make([]*Issued, 20)
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			granted, err := f.exchange("job-token", "https://gitlab.example.com/platform/lib.git", "read_repository")
			if err != nil {
				t.Error(err)
				return
			}
			results[i] = granted
		}()
	}
	time.Sleep(20 * time.Millisecond) // let the callers pile up behind the first mint
	close(f.minter.block)
	wg.Wait()
	if n := f.minter.mints.Load(); n != 1 {
		t.Fatalf("20 identical requests minted %d credentials, want 1", n)
	}
	for _, r := range results {
		if r == nil || r.AccessToken != results[0].AccessToken {
			t.Fatal("callers got different credentials")
		}
	}
	// Another scope set is another request.
	if _, err := f.exchange("job-token", "https://gitlab.example.com/platform/lib.git", "read_repository", "read_registry"); err != nil {
		t.Fatal(err)
	}
	if n := f.minter.mints.Load(); n != 2 {
		t.Fatalf("mints = %d, want 2", n)
	}
	// Revoked elsewhere (another replica, sharing the ledger): not handed out again.
	f.svc.cfg.SharedStore = true
	first, _ := f.exchange("job-token", "https://gitlab.example.com/platform/lib.git", "read_repository")
	if err := f.store.MarkRevoked(context.Background(), first.LedgerID, f.clock.Now()); err != nil {
		t.Fatal(err)
	}
	again, err := f.exchange("job-token", "https://gitlab.example.com/platform/lib.git", "read_repository")
	if err != nil || again.AccessToken == first.AccessToken {
		t.Fatalf("a credential revoked in the ledger came from the cache: %v", err)
	}
	if n := f.minter.mints.Load(); n != 3 {
		t.Fatalf("mints = %d, want 3", n)
	}
	// Near its end, the cached credential is not handed out again.
	f.clock.Add(59 * time.Minute)
	if _, err := f.exchange("job-token", "https://gitlab.example.com/platform/lib.git", "read_repository"); err != nil {
		t.Fatal(err)
	}
	if n := f.minter.mints.Load(); n != 4 {
		t.Fatalf("mints = %d, want 4 (a fresh credential near the old one's end)", n)
	}
}

func TestAmbiguousMintIsReconciledNotRepeated(t *testing.T) {
	f := newFixture(t)
	f.minter.createThenFail = true
	_, err := f.exchange("job-token", "https://gitlab.example.com/platform/lib.git", "read_repository")
	var e *Error
	if !errors.As(err, &e) || e.Code != CodeUnavailable {
		t.Fatalf("err = %v, want temporarily_unavailable", err)
	}
	if f.minter.mints.Load() != 1 {
		t.Fatalf("mints = %d, want 1 (no blind retry)", f.minter.mints.Load())
	}
	if f.minter.liveCount() != 0 {
		t.Fatal("the token created behind the lost answer is still alive")
	}
	// The client retries and gets a credential.
	if _, err := f.exchange("job-token", "https://gitlab.example.com/platform/lib.git", "read_repository"); err != nil {
		t.Fatal(err)
	}
	if n, _ := f.store.CountActive(context.Background()); n != 1 {
		t.Fatalf("active = %d, want 1", n)
	}
}

func TestMintErrorsMapToCodes(t *testing.T) {
	tests := []struct {
		err  error
		code string
	}{
		{&RetryAfterError{After: 7 * time.Second, Err: ErrRateLimited}, CodeRateLimited},
		{fmt.Errorf("%w: 403", ErrForbidden), CodeServerError},
		{fmt.Errorf("%w: 404", ErrNotFound), CodeInvalidTarget},
		{fmt.Errorf("%w: dial", ErrUnavailable), CodeUnavailable},
	}
	for _, tt := range tests {
		t.Run(tt.code, func(t *testing.T) {
			f := newFixture(t)
			f.minter.failNext = tt.err
			_, err := f.exchange("job-token", "https://gitlab.example.com/platform/lib.git", "read_repository")
			var e *Error
			if !errors.As(err, &e) || e.Code != tt.code {
				t.Fatalf("err = %v, want %s", err, tt.code)
			}
			pend, _ := f.store.ListPending(context.Background())
			if len(pend) != 0 {
				t.Fatalf("a refused mint left %d pending intents", len(pend))
			}
		})
	}
}

func TestRevokeAndReaper(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	a, err := f.exchange("job-token", "https://gitlab.example.com/platform/lib.git", "read_repository")
	if err != nil {
		t.Fatal(err)
	}
	b, err := f.exchange("job-token", "https://gitlab.example.com/platform/deploy.git", "write_repository")
	if err != nil {
		t.Fatal(err)
	}
	// RFC 7009: the client revokes a; unknown tokens are fine too.
	if err := f.svc.Revoke(ctx, "r2", a.AccessToken, "test"); err != nil {
		t.Fatal(err)
	}
	if err := f.svc.Revoke(ctx, "r3", "never-issued", "test"); err != nil {
		t.Fatal(err)
	}
	if f.minter.liveCount() != 1 {
		t.Fatalf("live = %d after revoke, want 1", f.minter.liveCount())
	}
	// The next request for a gets a fresh credential, not the revoked one.
	a2, err := f.exchange("job-token", "https://gitlab.example.com/platform/lib.git", "read_repository")
	if err != nil || a2.AccessToken == a.AccessToken {
		t.Fatalf("after revoke: %v, same token %v", err, a2 != nil && a2.AccessToken == a.AccessToken)
	}

	r := NewReaper(ReaperConfig{Interval: time.Second, Now: f.clock.Now}, f.store, f.minter, f.svc.Cache())
	if n, _ := r.RunOnce(ctx); n != 0 {
		t.Fatalf("reaper settled %d records before any TTL", n)
	}
	f.clock.Add(30 * time.Minute) // b's TTL
	if n, _ := r.RunOnce(ctx); n != 1 {
		t.Fatalf("reaper settled %d at b's TTL, want 1", n)
	}
	recB, _ := f.store.Get(ctx, b.LedgerID)
	if recB.State != ledger.Revoked {
		t.Fatalf("b is %s", recB.State)
	}
	f.clock.Add(30 * time.Minute)
	if n, _ := r.RunOnce(ctx); n != 1 {
		t.Fatalf("reaper settled %d at a2's TTL, want 1", n)
	}
	if f.minter.liveCount() != 0 {
		t.Fatalf("%d credentials outlived their TTL", f.minter.liveCount())
	}
}

func TestReconcileCrashedIntents(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	now := f.clock.Now()
	// A daemon died after GitLab created the token and before the ledger heard of it…
	created := ledger.Record{ID: "crashaftercreate", State: ledger.Pending, Kind: ledger.ProjectDeployToken, Owner: 1000, OwnerPath: "platform/lib",
		Scopes: []string{"read_repository"}, CreatedAt: now, ExpiresAt: now.Add(time.Hour), NextAttemptAt: now.Add(2 * time.Minute)}
	// …and another before GitLab heard of it.
	never := created
	never.ID = "crashbeforecreate"
	for _, r := range []ledger.Record{created, never} {
		if err := f.store.CreateIntent(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := f.minter.Mint(ctx, MintRequest{Name: "gltoken-crashaftercreate", Kind: ledger.ProjectDeployToken, Owner: 1000, OwnerPath: "platform/lib"}); err != nil {
		t.Fatal(err)
	}
	r := NewReaper(ReaperConfig{Now: f.clock.Now}, f.store, f.minter, f.svc.Cache())
	n, err := r.ReconcilePending(ctx)
	if err != nil || n != 2 {
		t.Fatalf("reconciled %d, %v", n, err)
	}
	if f.minter.liveCount() != 0 {
		t.Fatal("the orphan survived reconciliation")
	}
	state := func(id string) ledger.State {
		rec, err := f.store.Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		return rec.State
	}
	if got := state("crashaftercreate"); got != ledger.Revoked {
		t.Errorf("crashaftercreate: %s, want revoked", got)
	}
	// GitLab might still be working on the dead process's request: an intent
	// with no token stays pending until its lease is over…
	if got := state("crashbeforecreate"); got != ledger.Pending {
		t.Errorf("crashbeforecreate: %s, want pending within its lease", got)
	}
	// …and a token that appears meanwhile is still found and revoked.
	if _, err := f.minter.Mint(ctx, MintRequest{Name: "gltoken-crashbeforecreate", Kind: ledger.ProjectDeployToken, Owner: 1000, OwnerPath: "platform/lib"}); err != nil {
		t.Fatal(err)
	}
	f.clock.Add(DefaultMintLease)
	if _, err := r.RunOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if got := state("crashbeforecreate"); got != ledger.Revoked || f.minter.liveCount() != 0 {
		t.Errorf("crashbeforecreate: %s with %d live, want revoked", got, f.minter.liveCount())
	}
	never.ID = "nevercreated"
	never.CreatedAt, never.NextAttemptAt = f.clock.Now(), f.clock.Now().Add(DefaultMintLease)
	if err := f.store.CreateIntent(ctx, never); err != nil {
		t.Fatal(err)
	}
	f.clock.Add(DefaultMintLease)
	if _, err := r.RunOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if got := state("nevercreated"); got != ledger.Abandoned {
		t.Errorf("nevercreated: %s after its lease, want abandoned", got)
	}
}

func TestExplain(t *testing.T) {
	pol, err := policy.Parse([]byte(testPolicy), "policy.yaml", policy.Options{})
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{GitLabURL: "https://gitlab.example.com", MaxTTL: 12 * time.Hour}
	claims := map[string]string{"project_path": "platform/app", "ref": "feature", "ref_protected": "false"}
	out, allowed, err := Explain(cfg, pol, claims, []string{"https://gitlab.example.com/platform/lib.git"}, []string{"read_repository"})
	if err != nil || allowed {
		t.Fatalf("allowed=%v err=%v\n%s", allowed, err, out)
	}
	if !strings.Contains(out, "app-reads-libs") || !strings.Contains(out, "ref_protected") {
		t.Fatalf("trace does not name the failed check:\n%s", out)
	}
	claims["ref_protected"] = "true"
	out, allowed, _ = Explain(cfg, pol, claims, []string{"https://gitlab.example.com/platform/lib.git"}, []string{"read_repository"})
	if !allowed || !strings.Contains(out, "project_deploy_token") {
		t.Fatalf("allowed=%v\n%s", allowed, out)
	}
}

// TestExplainAndExchangeAgree: explain shows the plan an exchange carries
// out, the role included (a rule without access_level gets developer, never
// GitLab's maintainer default).
func TestExplainAndExchangeAgree(t *testing.T) {
	pol, err := policy.Parse([]byte(testPolicy), "policy.yaml", policy.Options{})
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{GitLabURL: "https://gitlab.example.com", MaxTTL: 12 * time.Hour}
	claims := map[string]string{"project_path": "platform/app", "ref": "main", "ref_protected": "true"}
	tests := []struct {
		resource, scope string
		kind            ledger.Kind
		role            int
		roleLine        string
	}{
		{"https://gitlab.example.com/platform/api.git", "read_api", ledger.ProjectAccessToken, policy.AccessDeveloper, "role:      access level 30\n"},
		{"https://gitlab.example.com/platform/deploy.git", "write_repository", ledger.ProjectAccessToken, policy.AccessDeveloper, "role:      access level 30\n"},
		{"https://gitlab.example.com/platform/lib.git", "read_repository", ledger.ProjectDeployToken, 0, ""},
	}
	for _, tt := range tests {
		t.Run(tt.scope, func(t *testing.T) {
			out, allowed, err := Explain(cfg, pol, claims, []string{tt.resource}, []string{tt.scope})
			if err != nil || !allowed {
				t.Fatalf("explain: allowed=%v err=%v\n%s", allowed, err, out)
			}
			if !strings.Contains(out, "mint:      "+string(tt.kind)+" on ") {
				t.Errorf("explain does not plan a %s:\n%s", tt.kind, out)
			}
			if tt.roleLine != "" && !strings.Contains(out, tt.roleLine) {
				t.Errorf("explain does not show %q:\n%s", tt.roleLine, out)
			}
			if tt.roleLine == "" && strings.Contains(out, "role:") {
				t.Errorf("explain shows a role for a deploy token:\n%s", out)
			}

			f := newFixture(t)
			granted, err := f.exchange("job-token", tt.resource, tt.scope)
			if err != nil {
				t.Fatal(err)
			}
			f.minter.mu.Lock()
			last := f.minter.last
			f.minter.mu.Unlock()
			if granted.Kind != tt.kind || last.Kind != tt.kind || last.AccessLevel != tt.role {
				t.Errorf("exchange minted %s with access level %d, want %s with %d", last.Kind, last.AccessLevel, tt.kind, tt.role)
			}
		})
	}
}

// TestReaperEventsCarryARequestID: a revocation no client asked for still has
// a request id in the audit log ("reaper-…"), one per event.
func TestReaperEventsCarryARequestID(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	for _, res := range []string{"https://gitlab.example.com/platform/lib.git", "https://gitlab.example.com/platform/libs/one.git"} {
		if _, err := f.exchange("job-token", res, "read_repository"); err != nil {
			t.Fatal(err)
		}
	}
	var logs strings.Builder
	r := NewReaper(ReaperConfig{Now: f.clock.Now, Audit: slog.New(slog.NewJSONHandler(&logs, nil))}, f.store, f.minter, f.svc.Cache())
	f.clock.Add(24 * time.Hour)
	if n, _ := r.RunOnce(ctx); n != 2 {
		t.Fatalf("reaper settled %d, want 2", n)
	}
	ids := map[string]bool{}
	for _, line := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		var ev struct {
			RequestID string `json:"request_id"`
			Msg       string `json:"msg"`
		}
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatal(err)
		}
		if ev.Msg == "revocation" {
			if !strings.HasPrefix(ev.RequestID, "reaper-") || len(ev.RequestID) != len("reaper-")+16 {
				t.Fatalf("revocation event with request_id %q:\n%s", ev.RequestID, line)
			}
			ids[ev.RequestID] = true
		}
	}
	if len(ids) != 2 {
		t.Fatalf("%d distinct request ids for 2 revocations:\n%s", len(ids), logs.String())
	}
}
