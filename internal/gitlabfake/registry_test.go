package gitlabfake

import (
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	gitlab "gitlab.com/gitlab-org/api/client-go"
)

// registryAuth asks /jwt/auth for scope with Basic auth user:secret and returns the status, the
// error code (401/403) and the granted actions by repository name (200).
func registryAuth(t *testing.T, s *Server, user, secret string, scopes ...string) (int, string, map[string][]string) {
	t.Helper()
	q := url.Values{"service": {"container_registry"}, "scope": scopes}
	req, _ := http.NewRequest("GET", s.URL()+"/jwt/auth?"+q.Encode(), nil)
	req.SetBasicAuth(user, secret)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct {
		Token  string
		Errors []struct{ Code string }
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 {
		if len(body.Errors) != 1 {
			t.Fatalf("/jwt/auth %d without one error: %+v", resp.StatusCode, body)
		}
		return resp.StatusCode, body.Errors[0].Code, nil
	}
	payload, err := base64.RawURLEncoding.DecodeString(strings.Split(body.Token, ".")[1])
	if err != nil {
		t.Fatal(err)
	}
	var claims struct {
		Access []struct {
			Name    string
			Actions []string
		}
	}
	if err := json.Unmarshal(payload, &claims); err != nil {
		t.Fatal(err)
	}
	got := map[string][]string{}
	for _, a := range claims.Access {
		got[a.Name] = a.Actions
	}
	return 200, "", got
}

// deviceLogin runs the device grant for scope, approved by u, and returns the access token.
func deviceLogin(t *testing.T, f *fixture, app *OAuthApplication, u *User, scope string) string {
	t.Helper()
	r := postForm(t, f.s.URL()+"/oauth/authorize_device", url.Values{"client_id": {app.UID}, "scope": {scope}})
	if r.status != 200 {
		t.Fatalf("authorize_device %q: %d %s", scope, r.status, r.body)
	}
	d := r.json(t)
	if err := f.s.ApproveDevice(d["user_code"].(string), u); err != nil {
		t.Fatal(err)
	}
	f.clock.Add(5 * time.Second)
	r = postForm(t, f.s.URL()+"/oauth/token", url.Values{"client_id": {app.UID}, "grant_type": {"urn:ietf:params:oauth:grant-type:device_code"}, "device_code": {d["device_code"].(string)}})
	if r.status != 200 {
		t.Fatalf("token %q: %d %s", scope, r.status, r.body)
	}
	return r.json(t)["access_token"].(string)
}

// TestRegistryAuthOAuthScopes: /jwt/auth takes an OAuth access token as the password
// (Gitlab::Auth#oauth_access_token_check, any username) with the abilities of its scopes
// (abilities_for_scopes): read_registry pulls, write_registry pushes (and only pushes: a push
// needs both), read_api pulls, api pulls, pushes and deletes within the user's role; a token
// without any registry ability is refused 403 DENIED before any scope is looked at
// (ContainerRegistryAuthenticationService#has_registry_ability?).
func TestRegistryAuthOAuthScopes(t *testing.T) {
	f := newFixture(t)
	app := f.s.AddOAuthApplication("gltoken", []string{"http://127.0.0.1/"}, []string{"read_repository", "write_repository", "read_registry", "write_registry", "read_api", "api"}, false)
	alice := f.s.AddUser("alice")
	f.s.AddMember(alice, "platform/app", Developer)
	f.s.AddProject("platform/secret")
	tests := []struct {
		scope  string
		status int
		code   string
		app    []string // actions granted on platform/app for pull,push,delete
	}{
		{"read_repository", 403, "DENIED", nil},
		{"read_repository write_repository", 403, "DENIED", nil},
		{"read_registry", 200, "", []string{"pull"}},
		{"write_registry", 200, "", []string{"push"}},
		{"read_registry write_registry", 200, "", []string{"pull", "push"}},
		{"read_api", 200, "", []string{"pull"}},
		{"api", 200, "", []string{"pull", "push"}}, // delete needs a maintainer
	}
	for _, tt := range tests {
		t.Run(tt.scope, func(t *testing.T) {
			tok := deviceLogin(t, f, app, alice, tt.scope)
			status, code, got := registryAuth(t, f.s, "oauth2", tok, "repository:platform/app:pull,push,delete", "repository:platform/secret:pull")
			if status != tt.status || code != tt.code {
				t.Fatalf("/jwt/auth: %d %s, want %d %s", status, code, tt.status, tt.code)
			}
			if status == 200 && (!slices.Equal(got["platform/app"], tt.app) || got["platform/secret"] != nil) {
				t.Fatalf("granted %v, want %v on platform/app and nothing on platform/secret", got, tt.app)
			}
		})
	}
	if status, code, _ := registryAuth(t, f.s, "oauth2", "not-a-token", "repository:platform/app:pull"); status != 401 || code != "UNAUTHORIZED" {
		t.Fatalf("an unknown token: %d %s", status, code)
	}
}

// TestRegistryImagePathsBelongToTheirProject: an image path belongs to the project among its
// three longest prefixes (ContainerRegistry::Path, LEVELS_SUPPORTED = 3), case ignored; an
// image deeper below its project, or a one-segment path, belongs to none.
func TestRegistryImagePathsBelongToTheirProject(t *testing.T) {
	f := newFixture(t)
	f.s.AddProject("platform/tools/cli")
	f.s.AddMember(f.svc, "platform", Owner)
	dt, _, err := newClient(t, f.s, f.svcPAT).DeployTokens.CreateGroupDeployToken("platform", &gitlab.CreateGroupDeployTokenOptions{
		Name: gitlab.Ptr("reg"), Scopes: &[]string{"read_registry"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		path string
		ok   bool
	}{
		{"platform/app", true},
		{"platform/app/builder", true},
		{"platform/app/builder/amd64", true},
		{"platform/app/a/b/c", false},
		{"Platform/App/Builder", true},
		{"platform/tools/cli/x/y", true},
		{"platform/tools", false},
		{"platform", false},
		{"other/app", false},
	} {
		status, _, got := registryAuth(t, f.s, dt.Username, dt.Token, "repository:"+tc.path+":pull")
		if status != 200 {
			t.Fatalf("%s: %d", tc.path, status)
		}
		name := strings.ToLower(tc.path)
		if ok := slices.Equal(got[name], []string{"pull"}); ok != tc.ok || (!tc.ok && len(got) != 0) {
			t.Errorf("%s: granted %v, want pull %v", tc.path, got, tc.ok)
		}
	}
}
