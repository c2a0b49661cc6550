package gitlab

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"os/exec"
	"testing"
	"time"

	"gltoken.dev/gltoken/internal/exchange"
	"gltoken.dev/gltoken/internal/gitlabfake"
	"gltoken.dev/gltoken/internal/ledger"
)

// lsRemote runs the real git against the stand-in with user:secret.
func lsRemote(t *testing.T, st standin, user, secret, path string) error {
	t.Helper()
	u, _ := url.Parse(st.s.URL())
	u.User = url.UserPassword(user, secret)
	u.Path = "/" + path + ".git"
	cmd := exec.Command("git", "ls-remote", u.String())
	cmd.Env = append(cmd.Environ(), "GIT_TERMINAL_PROMPT=0", "GIT_ASKPASS=", "GIT_CONFIG_NOSYSTEM=1", "HOME="+t.TempDir())
	out, err := cmd.CombinedOutput()
	if err != nil {
		return errors.New(string(out))
	}
	return nil
}

// TestRotateByID: the service account rotates a project access token by id;
// the successor has a new id, the same name and bot user, the expiry date
// asked for; the old secret stops working at git at once; the stand-in
// counts one create, one rotate and one bot user. Rotating the revoked
// predecessor again is refused (400) and changes nothing.
func TestRotateByID(t *testing.T) {
	st := newStandin(t)
	ctx := context.Background()
	lib := st.ownerID(t, ledger.ProjectAccessToken, "platform/lib")
	name := "gltoken-rotatebyid"
	cred, err := st.c.Mint(ctx, exchange.MintRequest{Name: name, Kind: ledger.ProjectAccessToken, Owner: lib, OwnerPath: "platform/lib",
		Scopes: []string{"read_repository"}, ExpiresAt: st.now().Add(time.Hour), AccessLevel: 20})
	if err != nil {
		t.Fatal(err)
	}
	if err := lsRemote(t, st, cred.Username, cred.Secret, "platform/lib"); err != nil {
		t.Fatalf("minted secret does not work: %v", err)
	}
	ref := exchange.TokenRef{Kind: ledger.ProjectAccessToken, Owner: lib, GitLabID: cred.GitLabID, Name: name}
	horizon := st.now().Add(72 * time.Hour)
	next, err := st.c.Rotate(ctx, ref, horizon)
	if err != nil {
		t.Fatalf("Rotate: %v", err)
	}
	if next.GitLabID == cred.GitLabID || next.Name != name || next.Secret == cred.Secret || next.Secret == "" {
		t.Fatalf("successor #%d %q, old #%d: want a new id, the same name, a new secret", next.GitLabID, next.Name, cred.GitLabID)
	}
	tok, _ := st.s.TokenByName(name)
	if tok.ID != next.GitLabID || tok.Username != cred.Username || tok.PreviousID != cred.GitLabID ||
		!tok.ExpiresAt.Equal(AccessTokenExpiryDate(horizon)) {
		t.Fatalf("stand-in successor %+v", tok)
	}
	if err := lsRemote(t, st, cred.Username, cred.Secret, "platform/lib"); err == nil {
		t.Fatal("the rotated-away secret still works at git")
	}
	if err := lsRemote(t, st, cred.Username, next.Secret, "platform/lib"); err != nil {
		t.Fatalf("successor does not work: %v", err)
	}
	// Only an active token can be rotated: the old id is revoked.
	if _, err := st.c.Rotate(ctx, ref, horizon); !errors.Is(err, exchange.ErrRejected) {
		t.Fatalf("rotating the revoked predecessor = %v, want ErrRejected", err)
	}
	if n := st.liveTokens(name); n != 1 {
		t.Fatalf("%d live tokens named %s, want 1", n, name)
	}
	if got := st.s.Stats(); got.AccessTokenCreates != 1 || got.AccessTokenRotates != 1 || got.BotUsers != 1 {
		t.Fatalf("stats %+v, want 1 create, 1 rotate, 1 bot user", got)
	}
	// More than GitLab's maximum lifetime is refused.
	if _, err := st.c.Rotate(ctx, exchange.TokenRef{Kind: ref.Kind, Owner: lib, GitLabID: next.GitLabID, Name: name}, st.now().AddDate(0, 0, 400)); !errors.Is(err, exchange.ErrRejected) {
		t.Fatalf("rotate 400 days ahead = %v, want ErrRejected", err)
	}
	if n := st.liveTokens(name); n != 1 {
		t.Fatalf("%d live tokens after a refused rotate, want 1", n)
	}
}

// TestRotateLostAnswer: a rotate whose answer is lost is ambiguous and not
// retried; the family's live member is found by name, with a new id.
func TestRotateLostAnswer(t *testing.T) {
	st := newStandin(t)
	ctx := context.Background()
	grp := st.ownerID(t, ledger.GroupAccessToken, "platform/tools")
	name := "gltoken-rotatelost"
	cred, err := st.c.Mint(ctx, exchange.MintRequest{Name: name, Kind: ledger.GroupAccessToken, Owner: grp, OwnerPath: "platform/tools",
		Scopes: []string{"read_repository"}, ExpiresAt: st.now().Add(time.Hour), AccessLevel: 20})
	if err != nil {
		t.Fatal(err)
	}
	before := st.c.attempts(http.MethodPost)
	remove := st.s.InjectFault(gitlabfake.Fault{Method: http.MethodPost, PathPrefix: "/api/v4/groups/", LoseResponse: true, Times: 1})
	defer remove()
	ref := exchange.TokenRef{Kind: ledger.GroupAccessToken, Owner: grp, GitLabID: cred.GitLabID, Name: name}
	if _, err := st.c.Rotate(ctx, ref, st.now().Add(48*time.Hour)); !errors.Is(err, exchange.ErrAmbiguous) {
		t.Fatalf("Rotate = %v, want ErrAmbiguous", err)
	}
	if n := st.c.attempts(http.MethodPost) - before; n != 1 {
		t.Fatalf("%d POSTs, want 1 (a rotate is never retried)", n)
	}
	found, ok, err := st.c.FindByName(ctx, ledger.GroupAccessToken, grp, name)
	if err != nil || !ok {
		t.Fatalf("FindByName = %v %v", ok, err)
	}
	tok, _ := st.s.TokenByName(name)
	if found.GitLabID != tok.ID || found.GitLabID == cred.GitLabID || tok.PreviousID != cred.GitLabID {
		t.Fatalf("found #%d, stand-in's live member #%d (from #%d), old #%d", found.GitLabID, tok.ID, tok.PreviousID, cred.GitLabID)
	}
	// The found member is rotatable by the service account: the bot stays.
	if _, err := st.c.Rotate(ctx, exchange.TokenRef{Kind: found.Kind, Owner: grp, GitLabID: found.GitLabID, Name: name}, st.now().Add(48*time.Hour)); err != nil {
		t.Fatalf("rotating the found member: %v", err)
	}
	if got := st.s.Stats(); got.BotUsers != 1 || got.AccessTokenRotates != 2 {
		t.Fatalf("stats %+v, want 1 bot user and 2 rotates", got)
	}
}

func TestRotateRefusesDeployTokens(t *testing.T) {
	st := newStandin(t)
	_, err := st.c.Rotate(context.Background(), exchange.TokenRef{Kind: ledger.ProjectDeployToken, Owner: 1, GitLabID: 1}, st.now().Add(time.Hour))
	if !errors.Is(err, exchange.ErrRejected) {
		t.Fatalf("Rotate deploy token = %v, want ErrRejected", err)
	}
	if n := st.c.attempts(http.MethodPost); n != 0 {
		t.Fatalf("%d POSTs, want none", n)
	}
}
