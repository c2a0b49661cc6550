package gitlab

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	gl "gitlab.com/gitlab-org/api/client-go"

	"gltoken.dev/gltoken/internal/exchange"
	"gltoken.dev/gltoken/internal/gitlabfake"
	"gltoken.dev/gltoken/internal/ledger"
)

// selfRotate rotates an access token with its own secret, as a job holding it could.
func selfRotate(t *testing.T, st standin, owner, secret string) (int64, string) {
	t.Helper()
	c, err := gl.NewClient(secret, gl.WithBaseURL(st.s.URL()), gl.WithoutRetries())
	if err != nil {
		t.Fatal(err)
	}
	exp := gl.ISOTime(st.now().AddDate(0, 0, 365))
	tok, _, err := c.ProjectAccessTokens.RotateProjectAccessTokenSelf(owner, &gl.RotateProjectAccessTokenOptions{ExpiresAt: &exp})
	if err != nil {
		t.Fatalf("self rotate: %v", err)
	}
	return tok.ID, tok.Token
}

// TestRevokeFamilyEndsSelfRotatedSuccessors: a credential that rotated itself
// (twice) leaves successors with new ids; RevokeFamily revokes them all and
// leaves other tokens alone.
func TestRevokeFamilyEndsSelfRotatedSuccessors(t *testing.T) {
	st := newStandin(t)
	ctx := context.Background()
	lib := st.ownerID(t, ledger.ProjectAccessToken, "platform/lib")
	mint := func(name string) exchange.Credential {
		cred, err := st.c.Mint(ctx, exchange.MintRequest{Name: name, Kind: ledger.ProjectAccessToken, Owner: lib,
			Scopes: []string{"api"}, ExpiresAt: st.now().Add(time.Hour), AccessLevel: 30})
		if err != nil {
			t.Fatal(err)
		}
		return cred
	}
	cred := mint("gltoken-fam")
	other := mint("gltoken-other")
	_, secret := selfRotate(t, st, "platform/lib", cred.Secret)
	_, _ = selfRotate(t, st, "platform/lib", secret)
	if st.liveTokens("gltoken-fam") != 1 {
		t.Fatal("setup: want one live successor")
	}
	n, err := st.c.RevokeFamily(ctx, exchange.TokenRef{Kind: ledger.ProjectAccessToken, Owner: cred.Owner, GitLabID: cred.GitLabID, Name: "gltoken-fam"})
	if err != nil {
		t.Fatal(err)
	}
	if n != 1 || st.liveTokens("gltoken-fam") != 0 {
		t.Fatalf("revoked %d successors; %d still live", n, st.liveTokens("gltoken-fam"))
	}
	if st.liveTokens("gltoken-other") != 1 {
		t.Fatal("an unrelated token was revoked")
	}
	// Listing what gltoken minted shows only the unrelated token now.
	list, err := st.c.ListManagedAccessTokens(ctx, ledger.ProjectAccessToken, lib)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].ID != other.GitLabID || list[0].UserID == 0 {
		t.Fatalf("ListManagedAccessTokens = %+v", list)
	}
	// The family of a token never rotated is the token itself.
	if n, err := st.c.RevokeFamily(ctx, exchange.TokenRef{Kind: ledger.ProjectAccessToken, Owner: other.Owner, GitLabID: other.GitLabID, Name: "gltoken-other"}); err != nil || n != 0 {
		t.Fatalf("RevokeFamily(unrotated) = %d, %v", n, err)
	}
	if st.liveTokens("gltoken-other") != 0 {
		t.Fatal("unrotated token not revoked")
	}
}

// TestRevoke404IsConfirmed (issue 9.4): a 404 counts as gone only when the
// owner is still visible; when the service account lost sight of the
// project, the token still works and Revoke must say so.
func TestRevoke404IsConfirmed(t *testing.T) {
	st := newStandin(t)
	ctx := context.Background()
	for _, kind := range []ledger.Kind{ledger.ProjectDeployToken, ledger.ProjectAccessToken} {
		t.Run(string(kind), func(t *testing.T) {
			owner := "platform/gone-" + strings.ReplaceAll(string(kind), "_", "-")
			st.s.AddProject(owner)
			svc, _ := st.s.UserByName("gltoken-svc")
			st.s.AddMember(svc, owner, gitlabfake.Maintainer)
			name := "gltoken-404-" + strings.ReplaceAll(string(kind), "_", "-")
			cred, err := st.c.Mint(ctx, exchange.MintRequest{Name: name, Kind: kind, Owner: st.ownerID(t, kind, owner), OwnerPath: owner,
				Scopes: []string{"read_repository"}, ExpiresAt: st.now().Add(time.Hour), AccessLevel: 20})
			if err != nil {
				t.Fatal(err)
			}
			ref := exchange.TokenRef{Kind: kind, Owner: cred.Owner, GitLabID: cred.GitLabID}
			// A token id unknown on a visible project: gone.
			if err := st.c.Revoke(ctx, exchange.TokenRef{Kind: kind, Owner: cred.Owner, GitLabID: cred.GitLabID + 1000}); err != nil {
				t.Fatalf("unknown token on a visible owner: %v", err)
			}
			st.s.RemoveMember(svc, owner)
			err = st.c.Revoke(ctx, ref)
			if !errors.Is(err, ErrRevokeUnconfirmed) || !errors.Is(err, exchange.ErrNotFound) {
				t.Fatalf("Revoke after losing the project = %v, want ErrRevokeUnconfirmed", err)
			}
			if st.liveTokens(name) != 1 {
				t.Fatal("the token should still be live in GitLab")
			}
			if kind == ledger.ProjectAccessToken {
				if _, err := st.c.RevokeFamily(ctx, exchange.TokenRef{Kind: ref.Kind, Owner: ref.Owner, GitLabID: ref.GitLabID, Name: name}); !errors.Is(err, ErrRevokeUnconfirmed) {
					t.Fatalf("RevokeFamily after losing the project = %v, want ErrRevokeUnconfirmed", err)
				}
			}
			st.s.AddMember(svc, owner, gitlabfake.Maintainer)
			if err := st.c.Revoke(ctx, ref); err != nil {
				t.Fatalf("Revoke once visible again: %v", err)
			}
			if st.liveTokens(name) != 0 {
				t.Fatal("token live after revoke")
			}
		})
	}
}

// TestMintNeverRequestsSelfRotate (issue 9.1): the adapter refuses to ask
// GitLab for a token that may rotate itself, and sends nothing.
func TestMintNeverRequestsSelfRotate(t *testing.T) {
	st := newStandin(t)
	lib := st.ownerID(t, ledger.ProjectAccessToken, "platform/lib")
	before := len(st.s.Requests())
	_, err := st.c.Mint(context.Background(), exchange.MintRequest{Name: "gltoken-sr", Kind: ledger.ProjectAccessToken, Owner: lib,
		Scopes: []string{"read_repository", "self_rotate"}, ExpiresAt: st.now().Add(time.Hour), AccessLevel: 30})
	if !errors.Is(err, exchange.ErrRejected) {
		t.Fatalf("Mint with self_rotate = %v, want ErrRejected", err)
	}
	if n := len(st.s.Requests()) - before; n != 0 {
		t.Fatalf("%d requests sent to GitLab", n)
	}
}
