package gitlab

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"gltoken.dev/gltoken/internal/exchange"
	"gltoken.dev/gltoken/internal/fingerprint"
	"gltoken.dev/gltoken/internal/gitlabfake"
	"gltoken.dev/gltoken/internal/ledger"
)

// These tests run the adapter against the project's GitLab stand-in.

type standin struct {
	s     *gitlabfake.Server
	c     testClient
	svc   *gitlabfake.User // the service account
	token string           // its token (api scope)
	now   func() time.Time
}

// newStandin is the stand-in with the service account Maintainer of
// platform/lib and Owner of platform/tools (which holds platform/tools/cli).
func newStandin(t *testing.T) standin {
	t.Helper()
	now := time.Now().UTC().Truncate(time.Second)
	st := startStandin(t, func() time.Time { return now })
	st.s.AddProject("platform/lib")
	st.s.AddProject("platform/tools/cli")
	st.s.AddGroup("platform/tools")
	st.s.AddMember(st.svc, "platform/lib", gitlabfake.Maintainer)
	st.s.AddMember(st.svc, "platform/tools", gitlabfake.Owner)
	return st
}

// startStandin starts the stand-in on clock (the client's too) with a
// service account whose token has the api scope, and no project yet.
func startStandin(t *testing.T, clock func() time.Time) standin {
	t.Helper()
	s := gitlabfake.Start(t, gitlabfake.Options{Now: clock})
	svc := s.AddUser("gltoken-svc")
	exp := clock().AddDate(0, 3, 0)
	token := s.CreatePersonalAccessToken(svc, "gltoken", []string{"api"}, &exp)
	return standin{s: s, c: newTestClient(t, s.URL(), token, clock), svc: svc, token: token, now: clock}
}

// project adds the project at path with the service account its Maintainer
// and returns its id.
func (st standin) project(path string) int64 {
	p := st.s.AddProject(path)
	st.s.AddMember(st.svc, path, gitlabfake.Maintainer)
	return p.ID
}

// group adds the group at path with the service account its Owner and
// returns its id.
func (st standin) group(path string) int64 {
	g := st.s.AddGroup(path)
	st.s.AddMember(st.svc, path, gitlabfake.Owner)
	return g.ID
}

// client is another client of the service account, e.g. to set up tokens
// without showing in st.c's logs and OnResponse calls.
func (st standin) client(t *testing.T) testClient {
	t.Helper()
	return newTestClient(t, st.s.URL(), st.token, st.now)
}

// count counts the requests the stand-in logged. It logs a request after
// answering it, so a request whose answer was lost may show up late: count
// those with testClient.attempts instead.
func (st standin) count(method, prefix string) int {
	n := 0
	for _, r := range st.s.Requests() {
		if r.Method == method && strings.HasPrefix(r.Path, prefix) {
			n++
		}
	}
	return n
}

// ownerID resolves path as the exchange does before it mints.
func (st standin) ownerID(t *testing.T, kind ledger.Kind, path string) int64 {
	t.Helper()
	id, err := st.c.ResolveOwner(context.Background(), kind, path)
	if err != nil {
		t.Fatalf("ResolveOwner(%s): %v", path, err)
	}
	return id
}

func (st standin) liveTokens(name string) int {
	n := 0
	for _, tok := range st.s.Tokens() {
		if tok.Name == name && !tok.Revoked && !tok.Deleted {
			n++
		}
	}
	return n
}

func TestStandinMintEachKind(t *testing.T) {
	st := newStandin(t)
	ctx := context.Background()
	now := st.now()
	ttl := 90*time.Minute + 700*time.Millisecond
	tests := []struct {
		kind   ledger.Kind
		fkind  string
		owner  string
		scopes []string
		level  int
	}{
		{ledger.ProjectDeployToken, gitlabfake.KindDeployProject, "platform/lib", []string{"read_repository", "read_registry"}, 0},
		{ledger.GroupDeployToken, gitlabfake.KindDeployGroup, "platform/tools", []string{"read_repository"}, 0},
		{ledger.ProjectAccessToken, gitlabfake.KindProjectAccess, "platform/lib", []string{"write_repository"}, 30},
		{ledger.GroupAccessToken, gitlabfake.KindGroupAccess, "platform/tools", []string{"read_api", "read_repository"}, 20},
	}
	for _, tt := range tests {
		t.Run(string(tt.kind), func(t *testing.T) {
			name := "gltoken-" + strings.ReplaceAll(string(tt.kind), "_", "-")
			owner := st.ownerID(t, tt.kind, tt.owner)
			cred, err := st.c.Mint(ctx, exchange.MintRequest{Name: name, Kind: tt.kind, Owner: owner, OwnerPath: tt.owner,
				Scopes: tt.scopes, ExpiresAt: now.Add(ttl), AccessLevel: tt.level})
			if err != nil {
				t.Fatalf("Mint: %v", err)
			}
			tok, ok := st.s.TokenByName(name)
			if !ok {
				t.Fatalf("stand-in has no token %s", name)
			}
			if tok.Kind != tt.fkind || tok.OwnerPath != tt.owner || tok.ID != cred.GitLabID {
				t.Errorf("token = %s %s #%d, want %s %s #%d", tok.Kind, tok.OwnerPath, tok.ID, tt.fkind, tt.owner, cred.GitLabID)
			}
			if tok.Kind != string(cred.Kind) {
				// One name per kind: the stand-in (and so the demo) says what the audit and metrics say.
				t.Errorf("the stand-in calls a %s a %s", cred.Kind, tok.Kind)
			}
			if strings.Join(tok.Scopes, " ") != strings.Join(tt.scopes, " ") {
				t.Errorf("scopes = %v, want %v", tok.Scopes, tt.scopes)
			}
			if tok.SecretSHA256 != fingerprint.Of(cred.Secret) {
				t.Errorf("secret fingerprint differs from the stand-in's")
			}
			if tok.Username != cred.Username || cred.Username == "" {
				t.Errorf("username = %q, stand-in says %q", cred.Username, tok.Username)
			}
			if tok.ExpiresAt == nil {
				t.Fatal("token never expires")
			}
			if tt.kind.AccessToken() {
				if tok.AccessLevel != tt.level {
					t.Errorf("access level = %d, want %d", tok.AccessLevel, tt.level)
				}
				want := AccessTokenExpiryDate(now.Add(ttl))
				if !tok.ExpiresAt.Equal(want) || !tok.ExpiresAt.After(now.Add(ttl)) {
					t.Errorf("expires_at = %s, want %s", tok.ExpiresAt, want)
				}
				if !cred.ExpiresAt.Equal(now.Add(ttl)) {
					t.Errorf("credential expiry = %s, want the real TTL %s", cred.ExpiresAt, now.Add(ttl))
				}
			} else {
				want := now.Add(ttl).Truncate(time.Second)
				if !tok.ExpiresAt.Equal(want) || !cred.ExpiresAt.Equal(want) {
					t.Errorf("expires_at = %s (credential %s), want %s exactly", tok.ExpiresAt, cred.ExpiresAt, want)
				}
				if cred.Username != "gitlab+deploy-token-"+strconv.FormatInt(tok.ID, 10) {
					t.Errorf("username = %q, want GitLab's default", cred.Username)
				}
			}
			if cred.Owner != owner || cred.OwnerPath != tt.owner {
				t.Errorf("credential owner = %d %q, want %d %q", cred.Owner, cred.OwnerPath, owner, tt.owner)
			}
			if strings.Contains(st.c.logs.String(), cred.Secret) || strings.Contains(st.c.logs.String(), st.token) {
				t.Fatal("secret in logs")
			}
		})
	}
}

func TestStandinLostResponseReconciles(t *testing.T) {
	st := newStandin(t)
	ctx := context.Background()
	lib := st.ownerID(t, ledger.ProjectDeployToken, "platform/lib")
	for _, kind := range []ledger.Kind{ledger.ProjectDeployToken, ledger.ProjectAccessToken} {
		t.Run(string(kind), func(t *testing.T) {
			before := st.c.attempts(http.MethodPost)
			remove := st.s.InjectFault(gitlabfake.Fault{Method: http.MethodPost, PathPrefix: "/api/v4/projects/", LoseResponse: true, Times: 1})
			defer remove()
			name := "gltoken-lost-" + strings.ReplaceAll(string(kind), "_", "-")
			_, err := st.c.Mint(ctx, exchange.MintRequest{Name: name, Kind: kind, Owner: lib,
				Scopes: []string{"read_repository"}, ExpiresAt: st.now().Add(time.Hour), AccessLevel: 20})
			if !errors.Is(err, exchange.ErrAmbiguous) {
				t.Fatalf("Mint = %v, want ErrAmbiguous", err)
			}
			if n := st.c.attempts(http.MethodPost) - before; n != 1 {
				t.Fatalf("%d POSTs, want 1", n)
			}
			if n := st.liveTokens(name); n != 1 {
				t.Fatalf("%d live tokens named %s, want 1 (the create happened once)", n, name)
			}
			ref, ok, err := st.c.FindByName(ctx, kind, lib, name)
			if err != nil || !ok {
				t.Fatalf("FindByName = %v %v", ok, err)
			}
			tok, _ := st.s.TokenByName(name)
			if ref.GitLabID != tok.ID {
				t.Fatalf("found #%d, stand-in has #%d", ref.GitLabID, tok.ID)
			}
			if err := st.c.Revoke(ctx, ref); err != nil {
				t.Fatalf("Revoke: %v", err)
			}
			if n := st.liveTokens(name); n != 0 {
				t.Fatalf("%d live tokens after revoke", n)
			}
			if _, ok, err := st.c.FindByName(ctx, kind, lib, name); err != nil || ok {
				t.Fatalf("FindByName after revoke = %v %v, want none", ok, err)
			}
			if n := st.c.attempts(http.MethodPost) - before; n != 1 {
				t.Fatalf("%d POSTs in all, want 1: nothing minted twice", n)
			}
		})
	}
}

func TestStandinServerErrorNotRetried(t *testing.T) {
	st := newStandin(t)
	ctx := context.Background()
	lib := st.ownerID(t, ledger.ProjectDeployToken, "platform/lib")
	remove := st.s.InjectFault(gitlabfake.Fault{Method: http.MethodPost, PathPrefix: "/api/v4/projects/", Status: 503})
	defer remove()
	_, err := st.c.Mint(ctx, exchange.MintRequest{Name: "gltoken-5xx", Kind: ledger.ProjectDeployToken, Owner: lib,
		Scopes: []string{"read_repository"}, ExpiresAt: st.now().Add(time.Hour)})
	if !errors.Is(err, exchange.ErrAmbiguous) {
		t.Fatalf("Mint = %v, want ErrAmbiguous", err)
	}
	if n := st.c.attempts(http.MethodPost); n != 1 {
		t.Fatalf("%d POSTs, want 1 (client-go's retry is off for creates)", n)
	}
	if n := st.count(http.MethodPost, "/api/v4/projects/"); n != 1 {
		t.Fatalf("the stand-in saw %d POSTs, want 1", n)
	}
	if _, ok, err := st.c.FindByName(ctx, ledger.ProjectDeployToken, lib, "gltoken-5xx"); err != nil || ok {
		t.Fatalf("FindByName = %v %v, want none", ok, err)
	}
}

func TestStandinErrorMapping(t *testing.T) {
	st := newStandin(t)
	ctx := context.Background()
	secret := st.s.AddProject("other/secret") // the service account is no member: GitLab hides it (404)
	lib, _ := st.s.ProjectByPath("platform/lib")
	devs := st.s.AddGroup("devs")

	req := func(owner int64, kind ledger.Kind) exchange.MintRequest {
		return exchange.MintRequest{Name: "gltoken-e-" + strconv.FormatInt(owner, 10), Kind: kind, Owner: owner,
			Scopes: []string{"read_repository"}, ExpiresAt: st.now().Add(time.Hour), AccessLevel: 20}
	}
	if _, err := st.c.ResolveOwner(ctx, ledger.ProjectDeployToken, "other/secret"); !errors.Is(err, exchange.ErrNotFound) {
		t.Errorf("resolve an invisible project: %v, want ErrNotFound", err)
	}
	if _, err := st.c.Mint(ctx, req(secret.ID, ledger.ProjectDeployToken)); !errors.Is(err, exchange.ErrNotFound) {
		t.Errorf("mint on an invisible project: %v, want ErrNotFound", err)
	}
	if _, err := st.c.ResolveOwner(ctx, ledger.ProjectDeployToken, "no/such"); !errors.Is(err, exchange.ErrNotFound) {
		t.Errorf("resolve a missing project: %v, want ErrNotFound", err)
	}
	if _, err := st.c.Mint(ctx, req(999999, ledger.ProjectDeployToken)); !errors.Is(err, exchange.ErrNotFound) {
		t.Errorf("mint on a missing project: %v, want ErrNotFound", err)
	}
	// A service account with only Developer rights.
	svc := st.s.AddUser("weak-svc")
	st.s.AddMember(svc, "devs", gitlabfake.Developer)
	st.s.AddMember(svc, "platform/lib", gitlabfake.Developer)
	weakExp := st.now().AddDate(0, 1, 0)
	weak := newTestClient(t, st.s.URL(), st.s.CreatePersonalAccessToken(svc, "weak", []string{"api"}, &weakExp), st.now)
	for _, kind := range []ledger.Kind{ledger.ProjectDeployToken, ledger.ProjectAccessToken} {
		if _, err := weak.Mint(ctx, req(lib.ID, kind)); !errors.Is(err, exchange.ErrForbidden) {
			t.Errorf("%s by a Developer: %v, want ErrForbidden", kind, err)
		}
	}
	if _, err := weak.Mint(ctx, req(devs.ID, ledger.GroupDeployToken)); !errors.Is(err, exchange.ErrForbidden) {
		t.Errorf("group deploy token by a Developer: %v, want ErrForbidden", err)
	}

	bad := newTestClient(t, st.s.URL(), "glpat-not-a-token", st.now)
	if err := bad.Ping(ctx); !errors.Is(err, ErrTokenInvalid) {
		t.Errorf("Ping with a bad token: %v, want ErrTokenInvalid", err)
	}
	if err := st.c.Ping(ctx); err != nil {
		t.Errorf("Ping: %v", err)
	}

	// Last: a 429 with Retry-After holds the client's calls for 7 s.
	remove := st.s.InjectFault(gitlabfake.Fault{Method: http.MethodPost, Status: 429, RetryAfter: 7 * time.Second})
	_, err := st.c.Mint(ctx, req(lib.ID, ledger.ProjectDeployToken))
	remove()
	var ra *exchange.RetryAfterError
	if !errors.As(err, &ra) || !errors.Is(err, exchange.ErrRateLimited) || ra.After != 7*time.Second {
		t.Errorf("429: %v, want RetryAfterError{7s}", err)
	}
}

func TestStandinRevokeIdempotent(t *testing.T) {
	st := newStandin(t)
	ctx := context.Background()
	for _, kind := range []ledger.Kind{ledger.ProjectDeployToken, ledger.GroupDeployToken, ledger.ProjectAccessToken, ledger.GroupAccessToken} {
		t.Run(string(kind), func(t *testing.T) {
			path := "platform/lib"
			if kind == ledger.GroupDeployToken || kind == ledger.GroupAccessToken {
				path = "platform/tools"
			}
			owner := st.ownerID(t, kind, path)
			name := "gltoken-rv-" + strings.ReplaceAll(string(kind), "_", "-")
			cred, err := st.c.Mint(ctx, exchange.MintRequest{Name: name, Kind: kind, Owner: owner, OwnerPath: path,
				Scopes: []string{"read_repository"}, ExpiresAt: st.now().Add(time.Hour), AccessLevel: 20})
			if err != nil {
				t.Fatal(err)
			}
			for _, ref := range []exchange.TokenRef{
				{Kind: kind, Owner: cred.Owner, GitLabID: cred.GitLabID},
				{Kind: kind, Owner: owner, GitLabID: cred.GitLabID}, // already gone
			} {
				if err := st.c.Revoke(ctx, ref); err != nil {
					t.Fatalf("Revoke(%+v): %v", ref, err)
				}
			}
			if n := st.liveTokens(name); n != 0 {
				t.Fatalf("%d live tokens after revoke", n)
			}
		})
	}
}

// TestStandinOneLookupPerMint: resolving the owner is the only GET of the
// project or group a mint costs (GitLab is asked every time: a cached id
// could belong to a project moved since), and the path travels URL-encoded,
// "." included, as GitLab wants it.
func TestStandinOneLookupPerMint(t *testing.T) {
	st := newStandin(t)
	ctx := context.Background()
	st.s.AddProject("platform/tools/cli.x")
	for i := range 3 {
		for _, tt := range []struct {
			kind ledger.Kind
			path string
		}{
			{ledger.ProjectAccessToken, "platform/tools/cli.x"},
			{ledger.GroupDeployToken, "platform/tools"},
		} {
			owner := st.ownerID(t, tt.kind, tt.path)
			if _, err := st.c.Mint(ctx, exchange.MintRequest{Name: fmt.Sprintf("gltoken-one-%d-%s", i, tt.kind), Kind: tt.kind,
				Owner: owner, OwnerPath: tt.path, Scopes: []string{"read_repository"}, ExpiresAt: st.now().Add(time.Hour), AccessLevel: 20}); err != nil {
				t.Fatalf("Mint on %s: %v", tt.path, err)
			}
		}
	}
	if n := st.count(http.MethodGet, "/api/v4/projects/platform%2Ftools%2Fcli%2Ex"); n != 3 {
		t.Errorf("%d project lookups for 3 mints, want 3", n)
	}
	if n := st.count(http.MethodGet, "/api/v4/groups/platform%2Ftools"); n != 3 {
		t.Errorf("%d group lookups for 3 mints, want 3", n)
	}
	// Nothing else of the project or group is read: no lookup by id.
	for _, r := range st.s.Requests() {
		if r.Method == http.MethodGet && (strings.Count(r.Path, "/") == 4 && (strings.HasPrefix(r.Path, "/api/v4/projects/") || strings.HasPrefix(r.Path, "/api/v4/groups/"))) &&
			!strings.Contains(r.Path, "%2F") {
			t.Errorf("extra lookup %s %s", r.Method, r.Path)
		}
	}
}

// TestResolveOwnerRefusesRedirects: GitLab's API finds a project by an old
// path (after a move) and ignores case; the policy allowed one exact path,
// so only that path resolves.
func TestResolveOwnerRefusesRedirects(t *testing.T) {
	st := newStandin(t)
	ctx := context.Background()
	id, err := st.c.ResolveOwner(ctx, ledger.ProjectDeployToken, "platform/lib")
	if err != nil {
		t.Fatal(err)
	}
	lib, _ := st.s.ProjectByPath("platform/lib")
	if id != lib.ID {
		t.Fatalf("id = %d, want %d", id, lib.ID)
	}
	if gid, err := st.c.ResolveOwner(ctx, ledger.GroupDeployToken, "platform/tools"); err != nil || gid <= 0 {
		t.Fatalf("group: %d %v", gid, err)
	}
	for _, tt := range []struct {
		kind ledger.Kind
		path string
	}{
		{ledger.ProjectDeployToken, "Platform/Lib"},
		{ledger.GroupDeployToken, "platform/TOOLS"},
	} {
		if _, err := st.c.ResolveOwner(ctx, tt.kind, tt.path); !errors.Is(err, exchange.ErrNotFound) {
			t.Errorf("%s: err = %v, want ErrNotFound", tt.path, err)
		}
	}
	if err := st.s.MoveProject("platform/lib", "finance/lib"); err != nil {
		t.Fatal(err)
	}
	_, err = st.c.ResolveOwner(ctx, ledger.ProjectAccessToken, "platform/lib")
	if !errors.Is(err, exchange.ErrNotFound) || !strings.Contains(err.Error(), "finance/lib") {
		t.Fatalf("old path of a moved project: err = %v, want ErrNotFound naming finance/lib", err)
	}
}
