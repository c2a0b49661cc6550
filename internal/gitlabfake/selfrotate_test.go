package gitlabfake

import (
	"net/http"
	"strconv"
	"testing"

	gitlab "gitlab.com/gitlab-org/api/client-go"
)

// TestAccessTokenSelfRotationFacts checks the stand-in against
// API::ResourceAccessTokens::SelfRotation and PersonalAccessTokens::RotateService:
// an access token with api scope rotates itself a year ahead; the successor has
// a new id and the same name, bot user, scopes and role; the old one is revoked
// at once; the limit is 365 days (400 with buffered_token_expiration_limit);
// presenting the old token to any rotate path revokes the whole family.
func TestAccessTokenSelfRotationFacts(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	c := newClient(t, f.s, f.svcPAT)
	pat, _, err := c.ProjectAccessTokens.CreateProjectAccessToken("platform/app", &gitlab.CreateProjectAccessTokenOptions{
		Name: gitlab.Ptr("gltoken-x"), Scopes: &[]string{"api"}, AccessLevel: gitlab.Ptr(gitlab.DeveloperPermissions),
	})
	if err != nil {
		t.Fatal(err)
	}
	selfURL := f.s.URL() + "/api/v4/projects/" + strconv.FormatInt(f.project.ID, 10) + "/access_tokens/self/rotate"

	// The service account's own PAT may not use the self route of a resource: 405.
	if r := doRaw(t, "POST", selfURL, f.svcPAT, "", ""); r.status != http.StatusMethodNotAllowed {
		t.Fatalf("human PAT on access_tokens/self/rotate: %d %s", r.status, r.body)
	}
	// More than 365 days is refused.
	over := t0.AddDate(0, 0, 366).Format("2006-01-02")
	if r := doRaw(t, "POST", selfURL+"?expires_at="+over, pat.Token, "", ""); r.status != http.StatusBadRequest {
		t.Fatalf("366 days: %d %s", r.status, r.body)
	}
	year := t0.AddDate(0, 0, 365).Format("2006-01-02")
	r := doRaw(t, "POST", selfURL+"?expires_at="+year, pat.Token, "", "")
	if r.status != http.StatusOK {
		t.Fatalf("self rotate a year ahead: %d %s", r.status, r.body)
	}
	m := r.json(t)
	succID := int64(m["id"].(float64))
	if succID == pat.ID || m["name"] != "gltoken-x" || int64(m["user_id"].(float64)) != pat.UserID ||
		int(m["access_level"].(float64)) != 30 || m["expires_at"] != year || m["token"] == pat.Token {
		t.Fatalf("successor %v (old id %d user %d)", m, pat.ID, pat.UserID)
	}
	var old, succ TokenState
	for _, s := range f.s.Tokens() {
		switch s.ID {
		case pat.ID:
			old = s
		case succID:
			succ = s
		}
	}
	if !old.Revoked || succ.Revoked || succ.PreviousID != pat.ID || len(succ.Scopes) != 1 || succ.Scopes[0] != "api" {
		t.Fatalf("old %+v successor %+v", old, succ)
	}
	mustClone(t, f.s, "x", m["token"].(string), "platform/app")

	// A token with only self_rotate may not use the id route (api scope only).
	sr, _, err := c.ProjectAccessTokens.CreateProjectAccessToken("platform/app", &gitlab.CreateProjectAccessTokenOptions{
		Name: gitlab.Ptr("sr"), Scopes: &[]string{"read_repository", "self_rotate"},
	})
	if err != nil {
		t.Fatal(err)
	}
	idURL := f.s.URL() + "/api/v4/projects/" + strconv.FormatInt(f.project.ID, 10) + "/access_tokens/" + strconv.FormatInt(sr.ID, 10) + "/rotate"
	if r := doRaw(t, "POST", idURL, sr.Token, "", ""); r.status != http.StatusForbidden {
		t.Fatalf("self_rotate scope on the id route: %d %s", r.status, r.body)
	}

	// Reuse detection: the revoked original on the self route revokes the successor.
	if r := doRaw(t, "POST", selfURL, pat.Token, "", ""); r.status != http.StatusUnauthorized {
		t.Fatalf("revoked token on rotate: %d %s", r.status, r.body)
	}
	st, _ := f.s.TokenByName("gltoken-x")
	if st.ID != succID || !st.Revoked {
		t.Fatalf("family not revoked: %+v", st)
	}
}

func TestAccessTokenLifetimeBuffered(t *testing.T) {
	t.Parallel()
	clock := newClock(t0)
	s := Start(t, Options{Now: clock.Now, BufferedTokenExpirationLimit: true})
	svc := s.AddUser("svc")
	s.AddProject("platform/app")
	s.AddMember(svc, "platform/app", Maintainer)
	c := newClient(t, s, s.CreatePersonalAccessToken(svc, "sa", []string{"api"}, nil))
	d400 := gitlab.ISOTime(t0.AddDate(0, 0, 400))
	pat, _, err := c.ProjectAccessTokens.CreateProjectAccessToken("platform/app", &gitlab.CreateProjectAccessTokenOptions{
		Name: gitlab.Ptr("t"), Scopes: &[]string{"api"}, ExpiresAt: &d400,
	})
	if err != nil {
		t.Fatalf("400 days with buffered_token_expiration_limit: %v", err)
	}
	d401 := gitlab.ISOTime(t0.AddDate(0, 0, 401))
	bc := newClient(t, s, pat.Token)
	if _, _, err := bc.ProjectAccessTokens.RotateProjectAccessTokenSelf("platform/app", &gitlab.RotateProjectAccessTokenOptions{ExpiresAt: &d401}); err == nil {
		t.Fatal("401 days accepted")
	}
}
