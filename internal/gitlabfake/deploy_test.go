package gitlabfake

import (
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	gitlab "gitlab.com/gitlab-org/api/client-go"
)

func TestDeployTokenClonesCannotPushAndExpiresToTheSecond(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	c := newClient(t, f.s, f.svcPAT)
	exp := f.clock.Now().Add(time.Hour)
	dt, _, err := c.DeployTokens.CreateProjectDeployToken("platform/app", &gitlab.CreateProjectDeployTokenOptions{
		Name:      gitlab.Ptr("ci-read"),
		ExpiresAt: &exp,
		Scopes:    &[]string{"read_repository"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(dt.Token, "gldt-") {
		t.Fatalf("token %q lacks the gldt- prefix", dt.Token)
	}
	if want := "gitlab+deploy-token-1"; dt.Username != want {
		t.Fatalf("username %q, want %q", dt.Username, want)
	}
	if dt.ExpiresAt == nil || !dt.ExpiresAt.Equal(exp) {
		t.Fatalf("expires_at %v, want %v", dt.ExpiresAt, exp)
	}

	dir := mustClone(t, f.s, dt.Username, dt.Token, "platform/app")

	out, err := commitAndPush(t, dir, repoURL(f.s, dt.Username, dt.Token, "platform/app"), "feature")
	if err == nil {
		t.Fatalf("a deploy token pushed:\n%s", out)
	}
	if !strings.Contains(out, "403") {
		t.Fatalf("push refusal should be a 403, got:\n%s", out)
	}

	if out, err := tryClone(t, f.s, "someone-else", dt.Token, "platform/app"); err == nil {
		t.Fatal("deploy token worked with a username other than its own")
	} else if !strings.Contains(out, "401") && !strings.Contains(out, "Authentication failed") {
		t.Fatalf("wrong username should fail authentication, got:\n%s", out)
	}

	f.clock.Set(exp) // still valid at the exact expiry instant (expires_at >= NOW())
	mustClone(t, f.s, dt.Username, dt.Token, "platform/app")

	f.clock.Set(exp.Add(time.Second))
	if out, err := tryClone(t, f.s, dt.Username, dt.Token, "platform/app"); err == nil {
		t.Fatal("deploy token still clones one second after its expiry")
	} else if !strings.Contains(out, "401") && !strings.Contains(out, "Authentication failed") {
		t.Fatalf("expired deploy token should fail authentication, got:\n%s", out)
	}
	st, ok := f.s.TokenByName("ci-read")
	if !ok || st.Kind != KindDeployProject || st.OwnerPath != "platform/app" || st.Username != dt.Username {
		t.Fatalf("TokenByName = %+v, %v", st, ok)
	}
	if strings.Contains(st.SecretSHA256, dt.Token) || len(st.SecretSHA256) != 64 {
		t.Fatalf("SecretSHA256 %q is not a fingerprint", st.SecretSHA256)
	}
}

func TestDeployTokenAPI(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	base := f.s.URL() + "/api/v4/projects/platform%2Fapp/deploy_tokens"
	dev := f.s.AddUser("dev")
	f.s.AddMember(dev, "platform/app", Developer)
	devPAT := f.s.CreatePersonalAccessToken(dev, "dev", []string{"api"}, nil)
	outsider := f.s.AddUser("outsider")
	outsiderPAT := f.s.CreatePersonalAccessToken(outsider, "o", []string{"api"}, nil)

	tests := []struct {
		name       string
		token      string
		body       string
		wantStatus int
		wantKey    string
		wantMsg    string
	}{
		{"missing name and scopes", f.svcPAT, `{}`, 400, "error", "name is missing, scopes is missing"},
		{"missing scopes", f.svcPAT, `{"name":"x"}`, 400, "error", "scopes is missing"},
		{"bad scope", f.svcPAT, `{"name":"x","scopes":["write_repository"]}`, 400, "error", "scopes does not have a valid value"},
		{"empty scopes", f.svcPAT, `{"name":"x","scopes":[]}`, 400, "message", "Scopes can't be blank"},
		{"bad username", f.svcPAT, `{"name":"x","scopes":["read_repository"],"username":"a b"}`, 400, "message", "Username can contain only letters, digits, '_', '-', '+', and '.'"},
		{"bad expires_at", f.svcPAT, `{"name":"x","scopes":["read_repository"],"expires_at":"soon"}`, 400, "error", "expires_at is invalid"},
		{"developer", devPAT, `{"name":"x","scopes":["read_repository"]}`, 403, "message", "403 Forbidden"},
		{"outsider", outsiderPAT, `{"name":"x","scopes":["read_repository"]}`, 404, "message", "404 Project Not Found"},
		{"bad token", "glpat-nope", `{"name":"x","scopes":["read_repository"]}`, 401, "message", "401 Unauthorized"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res := doRaw(t, "POST", base, tc.token, "application/json", tc.body)
			if res.status != tc.wantStatus {
				t.Fatalf("status %d, want %d (%s)", res.status, tc.wantStatus, res.body)
			}
			if got := res.json(t)[tc.wantKey]; got != tc.wantMsg {
				t.Fatalf("%s = %q, want %q", tc.wantKey, got, tc.wantMsg)
			}
		})
	}

	// A valid create, with a custom username and a form body with a comma-separated scope list.
	res := doRaw(t, "POST", base, f.svcPAT, "application/x-www-form-urlencoded",
		"name=reg&scopes=read_registry,read_repository&username=puller&expires_at=2026-03-11T10:00:00Z")
	if res.status != http.StatusCreated {
		t.Fatalf("create: %d %s", res.status, res.body)
	}
	m := res.json(t)
	for _, k := range []string{"id", "name", "username", "expires_at", "revoked", "expired", "scopes", "token"} {
		if _, ok := m[k]; !ok {
			t.Errorf("create response lacks %q: %s", k, res.body)
		}
	}
	if m["username"] != "puller" || m["expires_at"] != "2026-03-11T10:00:00.000Z" || m["expired"] != false {
		t.Fatalf("unexpected create response %s", res.body)
	}
	scopes := m["scopes"].([]any)
	if len(scopes) != 2 || scopes[0] != "read_repository" || scopes[1] != "read_registry" {
		t.Fatalf("scopes %v, want GitLab's canonical order", scopes)
	}
	secret := m["token"].(string)
	id := int(m["id"].(float64))
	tokURL := base + "/" + strconv.Itoa(id)

	get := doRaw(t, "GET", tokURL, f.svcPAT, "", "")
	if get.status != 200 {
		t.Fatalf("get: %d %s", get.status, get.body)
	}
	if _, ok := get.json(t)["token"]; ok {
		t.Fatal("GET shows the secret; GitLab shows it only on create")
	}
	list := doRaw(t, "GET", base, f.svcPAT, "", "")
	if list.status != 200 || !strings.Contains(string(list.body), `"puller"`) || list.header.Get("X-Total") != "1" {
		t.Fatalf("list: %d %s %v", list.status, list.body, list.header)
	}

	// Deploy tokens cannot call the REST API.
	if r := doRaw(t, "GET", base, secret, "", ""); r.status != 401 {
		t.Fatalf("deploy token on the API: %d, want 401", r.status)
	}
	// Only administrators list every deploy token.
	if r := doRaw(t, "GET", f.s.URL()+"/api/v4/deploy_tokens", f.svcPAT, "", ""); r.status != 403 {
		t.Fatalf("non-admin GET /deploy_tokens: %d, want 403", r.status)
	}
	root, _ := f.s.UserByName("root")
	rootPAT := f.s.CreatePersonalAccessToken(root, "admin", []string{"api"}, nil)
	if r := doRaw(t, "GET", f.s.URL()+"/api/v4/deploy_tokens", rootPAT, "", ""); r.status != 200 || !strings.Contains(string(r.body), "puller") {
		t.Fatalf("admin GET /deploy_tokens: %d %s", r.status, r.body)
	}

	del := doRaw(t, "DELETE", tokURL, f.svcPAT, "", "")
	if del.status != http.StatusNoContent {
		t.Fatalf("delete: %d %s", del.status, del.body)
	}
	if r := doRaw(t, "GET", tokURL, f.svcPAT, "", ""); r.status != 404 || r.json(t)["message"] != "404 Not found" {
		t.Fatalf("get after delete: %d %s", r.status, r.body)
	}
	if _, err := tryClone(t, f.s, "puller", secret, "platform/app"); err == nil {
		t.Fatal("a deleted deploy token still clones")
	}
}

func TestGroupDeployTokenReachesSubgroupProjectsAndNeedsOwner(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	f.s.AddProject("platform/libs/one")
	c := newClient(t, f.s, f.svcPAT)
	_, resp, err := c.DeployTokens.CreateGroupDeployToken("platform", &gitlab.CreateGroupDeployTokenOptions{
		Name: gitlab.Ptr("g"), Scopes: &[]string{"read_repository"},
	})
	if err == nil || resp.StatusCode != 403 {
		t.Fatalf("maintainer of a project created a group deploy token: %v", err)
	}
	owner := f.s.AddUser("owner")
	f.s.AddMember(owner, "platform", Owner)
	oc := newClient(t, f.s, f.s.CreatePersonalAccessToken(owner, "o", []string{"api"}, nil))
	dt, _, err := oc.DeployTokens.CreateGroupDeployToken("platform", &gitlab.CreateGroupDeployTokenOptions{
		Name: gitlab.Ptr("g"), Scopes: &[]string{"read_repository"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if dt.ExpiresAt != nil {
		t.Fatalf("omitted expires_at should mean never (null), got %v", dt.ExpiresAt)
	}
	mustClone(t, f.s, dt.Username, dt.Token, "platform/libs/one")
	f.s.AddProject("other/thing")
	if _, err := tryClone(t, f.s, dt.Username, dt.Token, "other/thing"); err == nil {
		t.Fatal("group deploy token cloned a project outside its group")
	}
}

func TestGitAccessRules(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	outsider := f.s.AddUser("outsider")
	outPAT := f.s.CreatePersonalAccessToken(outsider, "o", []string{"read_repository"}, nil)
	out, err := tryClone(t, f.s, "outsider", outPAT, "platform/app")
	if err == nil || !strings.Contains(out, "not found") {
		t.Fatalf("a user without access cloned or got the wrong error (err=%v):\n%s", err, out)
	}
	// A PAT without a repository scope cannot clone even its own project.
	regOnly := f.s.CreatePersonalAccessToken(f.svc, "reg", []string{"read_registry"}, nil)
	if out, err := tryClone(t, f.s, "svc", regOnly, "platform/app"); err == nil || !strings.Contains(out, "403") {
		t.Fatalf("read_registry PAT cloned (err=%v):\n%s", err, out)
	}
	// Anonymous: private asks for credentials, public clones.
	if out, err := tryClone(t, f.s, "", "", "platform/app"); err == nil {
		t.Fatalf("anonymous clone of a private project:\n%s", out)
	}
	r := doRaw(t, "GET", f.s.URL()+"/platform/app.git/info/refs?service=git-upload-pack", "", "", "")
	if r.status != 401 || r.header.Get("WWW-Authenticate") != `Basic realm="GitLab"` {
		t.Fatalf("anonymous info/refs: %d %v", r.status, r.header)
	}
	f.s.SetProjectVisibility("platform/app", "public")
	mustClone(t, f.s, "", "", "platform/app")
	// Content committed through the stand-in shows up in clones.
	if err := f.s.CommitFile("platform/app", "sub/dir/file.txt", "hello\n"); err != nil {
		t.Fatal(err)
	}
	dir := mustClone(t, f.s, "", "", "platform/app")
	if b, err := os.ReadFile(filepath.Join(dir, "sub", "dir", "file.txt")); err != nil || string(b) != "hello\n" {
		t.Fatalf("committed file: %q %v", b, err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "README.md")); err != nil || !strings.Contains(string(b), "app") {
		t.Fatalf("README: %q %v", b, err)
	}
}
