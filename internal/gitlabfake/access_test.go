package gitlabfake

import (
	"errors"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	gitlab "gitlab.com/gitlab-org/api/client-go"
)

func isoDate(t time.Time) *gitlab.ISOTime {
	d := gitlab.ISOTime(time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, time.UTC))
	return &d
}

func statusOf(t *testing.T, err error) int {
	t.Helper()
	var er *gitlab.ErrorResponse
	if !errors.As(err, &er) {
		t.Fatalf("error %v is not a *gitlab.ErrorResponse", err)
	}
	return er.Response.StatusCode
}

func TestProjectAccessTokenPushesAndRevokedTokenFails(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	c := newClient(t, f.s, f.svcPAT)
	pat, resp, err := c.ProjectAccessTokens.CreateProjectAccessToken("platform/app", &gitlab.CreateProjectAccessTokenOptions{
		Name:      gitlab.Ptr("pusher"),
		Scopes:    &[]string{"write_repository"},
		ExpiresAt: isoDate(f.clock.Now().AddDate(0, 0, 2)),
	})
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusCreated || !strings.HasPrefix(pat.Token, "glpat-") {
		t.Fatalf("create: %d %q", resp.StatusCode, pat.Token)
	}
	if pat.AccessLevel != gitlab.MaintainerPermissions {
		t.Fatalf("default access level %d, want 40", pat.AccessLevel)
	}
	st, _ := f.s.TokenByName("pusher")
	bot, ok := f.s.UserByName(st.Username)
	if !ok || bot.ID != pat.UserID || !bot.Bot || !regexp.MustCompile(`^project_1_bot_[0-9a-f]{32}$`).MatchString(bot.Username) {
		t.Fatalf("bot user %+v", bot)
	}

	// Any non-blank username works with an access token.
	dir := mustClone(t, f.s, "anything", pat.Token, "platform/app")
	if out, err := commitAndPush(t, dir, repoURL(f.s, "oauth2", pat.Token, "platform/app"), "main"); err != nil {
		t.Fatalf("maintainer-level project access token failed to push to main: %v\n%s", err, out)
	}

	if _, err := c.ProjectAccessTokens.RevokeProjectAccessToken("platform/app", pat.ID); err != nil {
		t.Fatal(err)
	}
	got, _, err := c.ProjectAccessTokens.GetProjectAccessToken("platform/app", pat.ID)
	if err != nil {
		t.Fatal(err)
	}
	if !got.Revoked || got.Active {
		t.Fatalf("after revoke: revoked=%v active=%v", got.Revoked, got.Active)
	}
	if out, err := commitAndPush(t, dir, repoURL(f.s, "oauth2", pat.Token, "platform/app"), "main"); err == nil {
		t.Fatal("revoked token pushed")
	} else if !strings.Contains(out, "401") && !strings.Contains(out, "Authentication failed") {
		t.Fatalf("revoked token should fail authentication:\n%s", out)
	}
}

func TestDeveloperTokenCannotPushToProtectedDefaultBranch(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	c := newClient(t, f.s, f.svcPAT)
	pat, _, err := c.ProjectAccessTokens.CreateProjectAccessToken("platform/app", &gitlab.CreateProjectAccessTokenOptions{
		Name:        gitlab.Ptr("dev"),
		Scopes:      &[]string{"write_repository"},
		AccessLevel: gitlab.Ptr(gitlab.DeveloperPermissions),
	})
	if err != nil {
		t.Fatal(err)
	}
	dir := mustClone(t, f.s, "x", pat.Token, "platform/app")
	remote := repoURL(f.s, "x", pat.Token, "platform/app")
	if out, err := commitAndPush(t, dir, remote, "feature"); err != nil {
		t.Fatalf("developer push to a feature branch: %v\n%s", err, out)
	}
	out, err := commitAndPush(t, dir, remote, "main")
	if err == nil || !strings.Contains(out, "You are not allowed to push code to protected branches on this project.") {
		t.Fatalf("developer pushed to the protected default branch (err=%v):\n%s", err, out)
	}

	reporter, _, err := c.ProjectAccessTokens.CreateProjectAccessToken("platform/app", &gitlab.CreateProjectAccessTokenOptions{
		Name:        gitlab.Ptr("rep"),
		Scopes:      &[]string{"write_repository"},
		AccessLevel: gitlab.Ptr(gitlab.ReporterPermissions),
	})
	if err != nil {
		t.Fatal(err)
	}
	out, err = commitAndPush(t, dir, repoURL(f.s, "x", reporter.Token, "platform/app"), "other")
	if err == nil || !strings.Contains(out, "403") {
		t.Fatalf("reporter-level token pushed (err=%v):\n%s", err, out)
	}
}

func TestAccessTokenRotation(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	c := newClient(t, f.s, f.svcPAT)
	pat, _, err := c.ProjectAccessTokens.CreateProjectAccessToken("platform/app", &gitlab.CreateProjectAccessTokenOptions{
		Name: gitlab.Ptr("rot"), Scopes: &[]string{"read_repository"},
	})
	if err != nil {
		t.Fatal(err)
	}
	wantExpiry := t0.AddDate(0, 0, 365).Format("2006-01-02")
	if pat.ExpiresAt == nil || pat.ExpiresAt.String() != wantExpiry {
		t.Fatalf("default expiry %v, want %s", pat.ExpiresAt, wantExpiry)
	}
	rotated, resp, err := c.ProjectAccessTokens.RotateProjectAccessToken("platform/app", pat.ID, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || rotated.Token == "" || rotated.Token == pat.Token || rotated.ID == pat.ID {
		t.Fatalf("rotate: %d %+v", resp.StatusCode, rotated)
	}
	if rotated.ExpiresAt.String() != t0.AddDate(0, 0, 7).Format("2006-01-02") {
		t.Fatalf("rotated expiry %v, want one week", rotated.ExpiresAt)
	}
	if rotated.UserID != pat.UserID {
		t.Fatal("rotation must keep the bot user")
	}
	if _, err := tryClone(t, f.s, "x", pat.Token, "platform/app"); err == nil {
		t.Fatal("old token still clones after rotation")
	}
	mustClone(t, f.s, "x", rotated.Token, "platform/app")
	// Rotating the revoked one again is refused.
	_, _, err = c.ProjectAccessTokens.RotateProjectAccessToken("platform/app", pat.ID, nil)
	if err == nil || statusOf(t, err) != 400 {
		t.Fatalf("rotating a revoked token: %v", err)
	}
}

func TestAccessTokenCreationRules(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	base := f.s.URL() + "/api/v4/projects/" + "1" + "/access_tokens"
	botTok, _, err := newClient(t, f.s, f.svcPAT).ProjectAccessTokens.CreateProjectAccessToken("platform/app",
		&gitlab.CreateProjectAccessTokenOptions{Name: gitlab.Ptr("bot"), Scopes: &[]string{"api"}})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name       string
		token      string
		body       string
		wantStatus int
		wantMsg    string
	}{
		{"owner level above creator", f.svcPAT, `{"name":"x","scopes":["api"],"access_level":50}`, 400, "Access level of the token contains permissions not held by the creating user"},
		{"bad access level", f.svcPAT, `{"name":"x","scopes":["api"],"access_level":35}`, 400, "access_level does not have a valid value"},
		{"bad scope", f.svcPAT, `{"name":"x","scopes":["sudo"]}`, 400, "scopes does not have a valid value"},
		{"too far", f.svcPAT, `{"name":"x","scopes":["api"],"expires_at":"2027-03-11"}`, 400, "Expires at must be before 2027-03-10"},
		{"created by a project access token", botTok.Token, `{"name":"x","scopes":["api"]}`, 400, "User does not have permission to create project access token"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res := doRaw(t, "POST", base, tc.token, "application/json", tc.body)
			if res.status != tc.wantStatus {
				t.Fatalf("status %d, want %d: %s", res.status, tc.wantStatus, res.body)
			}
			m := res.json(t)
			got := m["message"]
			if got == nil {
				got = m["error"]
			}
			if got != tc.wantMsg {
				t.Fatalf("message %q, want %q", got, tc.wantMsg)
			}
		})
	}
	// Listing needs Maintainer: GitLab answers 401, not 403.
	dev := f.s.AddUser("dev")
	f.s.AddMember(dev, "platform/app", Developer)
	if r := doRaw(t, "GET", base, f.s.CreatePersonalAccessToken(dev, "d", []string{"api"}, nil), "", ""); r.status != 401 {
		t.Fatalf("developer listing access tokens: %d, want 401", r.status)
	}
	if r := doRaw(t, "GET", base+"/999", f.svcPAT, "", ""); r.status != 404 || r.json(t)["message"] != "404 project Access Token Not Found" {
		t.Fatalf("unknown token id: %d %s", r.status, r.body)
	}
}

func TestAccessTokenExpiresAtMidnightUTC(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	c := newClient(t, f.s, f.svcPAT)
	// Shortest possible token: expires_at tomorrow = invalid from the next 00:00 UTC.
	pat, _, err := c.ProjectAccessTokens.CreateProjectAccessToken("platform/app", &gitlab.CreateProjectAccessTokenOptions{
		Name: gitlab.Ptr("short"), Scopes: &[]string{"read_repository", "read_api"}, ExpiresAt: isoDate(t0.AddDate(0, 0, 1)),
	})
	if err != nil {
		t.Fatal(err)
	}
	midnight := time.Date(2026, 3, 11, 0, 0, 0, 0, time.UTC)
	f.clock.Set(midnight.Add(-time.Second))
	mustClone(t, f.s, "x", pat.Token, "platform/app")
	f.clock.Set(midnight)
	if _, err := tryClone(t, f.s, "x", pat.Token, "platform/app"); err == nil {
		t.Fatal("access token still valid at 00:00 UTC of its expiry date")
	}
	r := doRaw(t, "GET", f.s.URL()+"/api/v4/projects/1", pat.Token, "", "")
	if r.status != 401 || r.json(t)["error_description"] != "Token is expired. You can either do re-authorization or token refresh." {
		t.Fatalf("expired token on the API: %d %s", r.status, r.body)
	}
}

func TestPersonalAccessTokenSelfRotationAndReuseDetection(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	c := newClient(t, f.s, f.svcPAT)
	self, _, err := c.PersonalAccessTokens.GetSinglePersonalAccessToken()
	if err != nil {
		t.Fatal(err)
	}
	if self.Name != "gltoken" || !self.Active || self.UserID != f.svc.ID {
		t.Fatalf("self: %+v", self)
	}
	rotated, _, err := c.PersonalAccessTokens.RotatePersonalAccessTokenSelf(nil)
	if err != nil {
		t.Fatal(err)
	}
	if rotated.Token == "" || rotated.Token == f.svcPAT {
		t.Fatal("rotation returned no new secret")
	}
	// The old token is dead at once.
	if _, _, err := c.Projects.GetProject("platform/app", nil); err == nil || statusOf(t, err) != 401 {
		t.Fatalf("old token after rotation: %v", err)
	}
	c2 := newClient(t, f.s, rotated.Token)
	if _, _, err := c2.Projects.GetProject("platform/app", nil); err != nil {
		t.Fatalf("new token: %v", err)
	}
	// Reuse: presenting the revoked token to the rotate endpoint revokes the whole family.
	if _, _, err := c.PersonalAccessTokens.RotatePersonalAccessTokenSelf(nil); err == nil || statusOf(t, err) != 401 {
		t.Fatalf("rotating a revoked token: %v", err)
	}
	if _, _, err := c2.Projects.GetProject("platform/app", nil); err == nil || statusOf(t, err) != 401 {
		t.Fatalf("the newest token of the family survived reuse detection: %v", err)
	}
	for _, st := range f.s.Tokens() {
		if st.Kind == KindPersonal && st.UserID == f.svc.ID && !st.Revoked {
			t.Fatalf("token %d of the family is still active", st.ID)
		}
	}
}

func TestPATSelfRevokeAndScopes(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	readOnly := f.s.CreatePersonalAccessToken(f.svc, "ro", []string{"read_api"}, nil)
	if r := doRaw(t, "GET", f.s.URL()+"/api/v4/projects/platform%2Fapp", readOnly, "", ""); r.status != 200 {
		t.Fatalf("read_api GET: %d", r.status)
	}
	r := doRaw(t, "POST", f.s.URL()+"/api/v4/projects/platform%2Fapp/deploy_tokens", readOnly, "application/json", `{"name":"x","scopes":["read_repository"]}`)
	if r.status != 403 || r.json(t)["error"] != "insufficient_scope" {
		t.Fatalf("read_api POST: %d %s", r.status, r.body)
	}
	if r := doRaw(t, "DELETE", f.s.URL()+"/api/v4/personal_access_tokens/self", readOnly, "", ""); r.status != 204 {
		t.Fatalf("self revoke: %d %s", r.status, r.body)
	}
	if r := doRaw(t, "GET", f.s.URL()+"/api/v4/personal_access_tokens/self", readOnly, "", ""); r.status != 401 {
		t.Fatalf("revoked self: %d", r.status)
	}
}

func TestProjectsAndGroupsAPI(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	c := newClient(t, f.s, f.svcPAT)
	p, _, err := c.Projects.GetProject("platform/app", nil)
	if err != nil {
		t.Fatal(err)
	}
	if p.ID != f.project.ID || p.PathWithNamespace != "platform/app" || p.Namespace.FullPath != "platform" {
		t.Fatalf("project %+v", p)
	}
	if _, resp, err := c.Projects.GetProject("platform/nope", nil); err == nil || resp.StatusCode != 404 {
		t.Fatalf("missing project: %v", err)
	}
	if r := doRaw(t, "GET", f.s.URL()+"/api/v4/projects/platform%2Fnope", f.svcPAT, "", ""); r.json(t)["message"] != "404 Project Not Found" {
		t.Fatalf("404 body %s", r.body)
	}
	g, _, err := c.Groups.GetGroup("platform", nil)
	if err != nil {
		t.Fatal(err)
	}
	if g.FullPath != "platform" {
		t.Fatalf("group %+v", g)
	}
	// Bearer works as well as PRIVATE-TOKEN; anonymous users do not see private projects.
	req, _ := http.NewRequest("GET", f.s.URL()+"/api/v4/projects/1", nil)
	req.Header.Set("Authorization", "Bearer "+f.svcPAT)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("bearer: %d", resp.StatusCode)
	}
	if r := doRaw(t, "GET", f.s.URL()+"/api/v4/projects/1", "", "", ""); r.status != 404 {
		t.Fatalf("anonymous: %d", r.status)
	}
}

func TestAccessTokenSelfRotationAndGroupTokens(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	c := newClient(t, f.s, f.svcPAT)
	pat, _, err := c.ProjectAccessTokens.CreateProjectAccessToken("platform/app", &gitlab.CreateProjectAccessTokenOptions{
		Name: gitlab.Ptr("self"), Scopes: &[]string{"read_repository", "self_rotate"},
	})
	if err != nil {
		t.Fatal(err)
	}
	bc := newClient(t, f.s, pat.Token)
	rotated, _, err := bc.ProjectAccessTokens.RotateProjectAccessTokenSelf("platform/app", nil)
	if err != nil {
		t.Fatal(err)
	}
	if rotated.Token == pat.Token || rotated.Name != "self" || rotated.AccessLevel != pat.AccessLevel {
		t.Fatalf("self rotation: %+v", rotated)
	}
	mustClone(t, f.s, "x", rotated.Token, "platform/app")

	// Group access tokens need Owner on the group: a project maintainer cannot create one.
	_, resp, err := c.GroupAccessTokens.CreateGroupAccessToken("platform", &gitlab.CreateGroupAccessTokenOptions{
		Name: gitlab.Ptr("g"), Scopes: &[]string{"read_repository"},
	})
	if err == nil || resp.StatusCode != 400 {
		t.Fatalf("maintainer of a project created a group access token: %v", err)
	}
	owner := f.s.AddUser("owner")
	f.s.AddMember(owner, "platform", Owner)
	oc := newClient(t, f.s, f.s.CreatePersonalAccessToken(owner, "o", []string{"api"}, nil))
	gat, _, err := oc.GroupAccessTokens.CreateGroupAccessToken("platform", &gitlab.CreateGroupAccessTokenOptions{
		Name: gitlab.Ptr("g"), Scopes: &[]string{"read_repository"}, AccessLevel: gitlab.Ptr(gitlab.ReporterPermissions),
	})
	if err != nil {
		t.Fatal(err)
	}
	st, _ := f.s.TokenByName("g")
	if st.Kind != KindGroupAccess || !regexp.MustCompile(`^group_\d+_bot_[0-9a-f]{32}$`).MatchString(st.Username) {
		t.Fatalf("group token state %+v", st)
	}
	// The group bot reaches projects below the group through inherited membership.
	mustClone(t, f.s, "x", gat.Token, "platform/app")
}
