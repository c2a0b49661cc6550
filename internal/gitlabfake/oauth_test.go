package gitlabfake

import (
	"crypto/sha256"
	"encoding/base64"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

func postForm(t *testing.T, u string, form url.Values) apiResult {
	t.Helper()
	return doRaw(t, "POST", u, "", "application/x-www-form-urlencoded", form.Encode())
}

func oauthFixture(t *testing.T) (*fixture, *OAuthApplication, *User) {
	f := newFixture(t)
	app := f.s.AddOAuthApplication("gltoken", []string{"http://127.0.0.1/callback"}, []string{"read_repository", "write_repository", "read_registry", "write_registry", "api"}, false)
	alice := f.s.AddUser("alice")
	f.s.AddMember(alice, "platform/app", Developer)
	return f, app, alice
}

func TestOAuthDeviceFlow(t *testing.T) {
	f, app, alice := oauthFixture(t)
	base := f.s.URL()

	r := postForm(t, base+"/oauth/authorize_device", url.Values{"client_id": {app.UID}, "scope": {"read_repository"}})
	if r.status != 200 {
		t.Fatalf("authorize_device: %d %s", r.status, r.body)
	}
	d := r.json(t)
	if d["verification_uri"] != base+"/oauth/device" || d["expires_in"] != float64(300) || d["interval"] != float64(5) {
		t.Fatalf("device answer %v", d)
	}
	userCode := d["user_code"].(string)
	if d["verification_uri_complete"] != base+"/oauth/device?user_code="+userCode {
		t.Fatalf("verification_uri_complete %v", d["verification_uri_complete"])
	}
	poll := func() (int, map[string]any) {
		r := postForm(t, base+"/oauth/token", url.Values{"client_id": {app.UID}, "grant_type": {"urn:ietf:params:oauth:grant-type:device_code"}, "device_code": {d["device_code"].(string)}})
		return r.status, r.json(t)
	}
	if st, m := poll(); st != 400 || m["error"] != "authorization_pending" {
		t.Fatalf("first poll: %d %v", st, m)
	}
	f.clock.Add(2 * time.Second)
	if st, m := poll(); st != 400 || m["error"] != "slow_down" {
		t.Fatalf("early poll: %d %v", st, m)
	}
	if err := f.s.ApproveDevice(strings.ToLower(userCode), alice); err != nil {
		t.Fatal(err)
	}
	f.clock.Add(5 * time.Second)
	st, tok := poll()
	if st != 200 || tok["token_type"] != "Bearer" || tok["expires_in"] != float64(7200) || tok["scope"] != "read_repository" || tok["refresh_token"] == "" {
		t.Fatalf("token: %d %v", st, tok)
	}
	f.clock.Add(5 * time.Second)
	if st, m := poll(); st != 400 || m["error"] != "invalid_grant" {
		t.Fatalf("device code reused: %d %v", st, m)
	}

	// The token clones with any username (oauth2 by convention), but cannot push: read_repository.
	access := tok["access_token"].(string)
	dir := mustClone(t, f.s, "oauth2", access, "platform/app")
	if _, err := commitAndPush(t, dir, repoURL(f.s, "oauth2", access, "platform/app"), "feature"); err == nil {
		t.Fatal("a read_repository OAuth token pushed")
	}
	f.s.AddProject("platform/secret")
	if _, err := tryClone(t, f.s, "oauth2", access, "platform/secret"); err == nil {
		t.Fatal("cloned a project alice is no member of")
	}

	// Expired after 7200 s.
	f.clock.Add(7200 * time.Second)
	if _, err := tryClone(t, f.s, "oauth2", access, "platform/app"); err == nil {
		t.Fatal("cloned with an expired OAuth token")
	}
}

func TestOAuthDeviceDeniedExpiredAndScopes(t *testing.T) {
	f, app, _ := oauthFixture(t)
	base := f.s.URL()
	start := func(scope string) map[string]any {
		r := postForm(t, base+"/oauth/authorize_device", url.Values{"client_id": {app.UID}, "scope": {scope}})
		if r.status != 200 {
			t.Fatalf("authorize_device: %d %s", r.status, r.body)
		}
		return r.json(t)
	}
	poll := func(d map[string]any) map[string]any {
		f.clock.Add(6 * time.Second)
		return postForm(t, base+"/oauth/token", url.Values{"client_id": {app.UID}, "grant_type": {"urn:ietf:params:oauth:grant-type:device_code"}, "device_code": {d["device_code"].(string)}}).json(t)
	}
	d := start("read_repository")
	if err := f.s.DenyDevice(d["user_code"].(string)); err != nil {
		t.Fatal(err)
	}
	if m := poll(d); m["error"] != "access_denied" {
		t.Fatalf("denied: %v", m)
	}
	d = start("read_repository")
	f.clock.Add(301 * time.Second)
	if m := poll(d); m["error"] != "expired_token" {
		t.Fatalf("expired: %v", m)
	}
	if r := postForm(t, base+"/oauth/authorize_device", url.Values{"client_id": {app.UID}, "scope": {"read_user"}}); r.status != 400 || r.json(t)["error"] != "invalid_scope" {
		t.Fatalf("scope outside the application: %d %s", r.status, r.body)
	}
	if r := postForm(t, base+"/oauth/authorize_device", url.Values{"client_id": {"nope"}, "scope": {"read_repository"}}); r.status != 401 || r.json(t)["error"] != "invalid_client" {
		t.Fatalf("unknown client: %d %s", r.status, r.body)
	}
}

func TestOAuthStandinDeviceRouteLoopbackOnly(t *testing.T) {
	f, app, _ := oauthFixture(t)
	d := postForm(t, f.s.URL()+"/oauth/authorize_device", url.Values{"client_id": {app.UID}, "scope": {"read_repository"}}).json(t)
	if got := f.s.PendingDeviceCodes(); len(got) != 1 || got[0] != d["user_code"] {
		t.Fatalf("pending = %v", got)
	}
	r := postForm(t, f.s.URL()+"/-/standin/oauth/device", url.Values{"user_code": {d["user_code"].(string)}, "user": {"alice"}, "action": {"approve"}})
	if r.status != 200 {
		t.Fatalf("approve: %d %s", r.status, r.body)
	}
	if got := f.s.PendingDeviceCodes(); len(got) != 0 {
		t.Fatalf("pending after approval = %v", got)
	}
}

func TestOAuthRefreshRotatesAndRevoke(t *testing.T) {
	f, app, alice := oauthFixture(t)
	base := f.s.URL()
	d := postForm(t, base+"/oauth/authorize_device", url.Values{"client_id": {app.UID}, "scope": {"read_repository write_repository"}}).json(t)
	if err := f.s.ApproveDevice(d["user_code"].(string), alice); err != nil {
		t.Fatal(err)
	}
	tok := postForm(t, base+"/oauth/token", url.Values{"client_id": {app.UID}, "grant_type": {"urn:ietf:params:oauth:grant-type:device_code"}, "device_code": {d["device_code"].(string)}}).json(t)
	refresh := func(rt string) apiResult {
		return postForm(t, base+"/oauth/token", url.Values{"client_id": {app.UID}, "grant_type": {"refresh_token"}, "refresh_token": {rt}})
	}
	r := refresh(tok["refresh_token"].(string))
	if r.status != 200 {
		t.Fatalf("refresh: %d %s", r.status, r.body)
	}
	tok2 := r.json(t)
	if tok2["refresh_token"] == tok["refresh_token"] || tok2["scope"] != "read_repository write_repository" {
		t.Fatalf("refreshed %v", tok2)
	}
	// The used refresh token and the old access token are invalid.
	if r := refresh(tok["refresh_token"].(string)); r.status != 400 || r.json(t)["error"] != "invalid_grant" {
		t.Fatalf("reused refresh token: %d %s", r.status, r.body)
	}
	if _, err := tryClone(t, f.s, "oauth2", tok["access_token"].(string), "platform/app"); err == nil {
		t.Fatal("the replaced access token still clones")
	}
	// write_repository pushes a branch (developer), not the protected default branch.
	access := tok2["access_token"].(string)
	dir := mustClone(t, f.s, "oauth2", access, "platform/app")
	if out, err := commitAndPush(t, dir, repoURL(f.s, "oauth2", access, "platform/app"), "feature"); err != nil {
		t.Fatalf("push a branch: %v\n%s", err, out)
	}
	if r := postForm(t, base+"/oauth/revoke", url.Values{"client_id": {app.UID}, "token": {access}}); r.status != 200 {
		t.Fatalf("revoke: %d %s", r.status, r.body)
	}
	if _, err := tryClone(t, f.s, "oauth2", access, "platform/app"); err == nil {
		t.Fatal("a revoked access token clones")
	}
	if r := refresh(tok2["refresh_token"].(string)); r.status != 400 {
		t.Fatalf("refresh of a revoked grant: %d %s", r.status, r.body)
	}
	if r := postForm(t, base+"/oauth/revoke", url.Values{"client_id": {app.UID}, "token": {"unknown"}}); r.status != 200 {
		t.Fatalf("revoke of an unknown token: %d", r.status)
	}
	var refreshes int
	for _, e := range f.s.OAuthTokenEvents() {
		if e.GrantType == "refresh_token" && e.Error == "" {
			refreshes++
		}
	}
	if refreshes != 1 {
		t.Fatalf("refreshes = %d", refreshes)
	}
}

func TestOAuthAuthorizationCodePKCE(t *testing.T) {
	f, app, alice := oauthFixture(t)
	base := f.s.URL()
	verifier := "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
	sum := sha256.Sum256([]byte(verifier))
	challenge := base64.RawURLEncoding.EncodeToString(sum[:])
	hc := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	authorize := func(redirect string) *url.URL {
		q := url.Values{"client_id": {app.UID}, "redirect_uri": {redirect}, "response_type": {"code"}, "state": {"xyz"},
			"scope": {"read_repository"}, "code_challenge": {challenge}, "code_challenge_method": {"S256"}}
		resp, err := hc.Get(base + "/oauth/authorize?" + q.Encode())
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 302 {
			t.Fatalf("authorize: %d", resp.StatusCode)
		}
		loc, _ := url.Parse(resp.Header.Get("Location"))
		return loc
	}
	redirect := "http://127.0.0.1:45678/callback"
	if loc := authorize(redirect); loc.Path != "/users/sign_in" {
		t.Fatalf("signed out: redirected to %s", loc)
	}
	f.s.SetBrowserUser(alice)
	loc := authorize(redirect)
	if loc.Host != "127.0.0.1:45678" || loc.Query().Get("state") != "xyz" || loc.Query().Get("code") == "" {
		t.Fatalf("redirect %s", loc)
	}
	code := loc.Query().Get("code")
	exchange := func(v string) apiResult {
		return postForm(t, base+"/oauth/token", url.Values{"client_id": {app.UID}, "grant_type": {"authorization_code"}, "code": {code}, "redirect_uri": {redirect}, "code_verifier": {v}})
	}
	if r := exchange("wrong-verifier-wrong-verifier-wrong-verifier"); r.status != 400 || r.json(t)["error"] != "invalid_grant" {
		t.Fatalf("wrong verifier: %d %s", r.status, r.body)
	}
	r := exchange(verifier)
	if r.status != 200 || r.json(t)["expires_in"] != float64(7200) {
		t.Fatalf("code exchange: %d %s", r.status, r.body)
	}
	access := r.json(t)["access_token"].(string)
	mustClone(t, f.s, "oauth2", access, "platform/app")
	// The code works once; using it again revokes what it issued.
	if r := exchange(verifier); r.status != 400 {
		t.Fatalf("code reused: %d", r.status)
	}
	if _, err := tryClone(t, f.s, "oauth2", access, "platform/app"); err == nil {
		t.Fatal("token of a reused code still clones")
	}
	// An unregistered redirect URI is refused without redirecting.
	q := url.Values{"client_id": {app.UID}, "redirect_uri": {"http://evil.example/cb"}, "response_type": {"code"}, "code_challenge": {challenge}, "code_challenge_method": {"S256"}}
	resp, err := hc.Get(base + "/oauth/authorize?" + q.Encode())
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 401 || resp.Header.Get("Location") != "" {
		t.Fatalf("bad redirect: %d %s", resp.StatusCode, resp.Header.Get("Location"))
	}
}
