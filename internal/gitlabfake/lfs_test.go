package gitlabfake

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	gitlab "gitlab.com/gitlab-org/api/client-go"
)

// lfsCall is one request to an LFS route; authorization is a whole header value.
func lfsCall(t *testing.T, method, url, authorization, body string) apiResult {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if authorization != "" {
		req.Header.Set("Authorization", authorization)
	}
	if method == http.MethodPost {
		req.Header.Set("Content-Type", "application/vnd.git-lfs+json")
		req.Header.Set("Accept", "application/vnd.git-lfs+json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return apiResult{status: resp.StatusCode, header: resp.Header, body: b}
}

func basic(user, pass string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))
}

func batchBody(op, oid string, size int) string {
	return fmt.Sprintf(`{"operation":%q,"transfers":["basic"],"ref":{"name":"refs/heads/main"},"objects":[{"oid":%q,"size":%d}],"hash_algo":"sha256"}`, op, oid, size)
}

type lfsAction struct {
	Href   string            `json:"href"`
	Header map[string]string `json:"header"`
}

type lfsObject struct {
	OID           string               `json:"oid"`
	Size          int64                `json:"size"`
	Authenticated bool                 `json:"authenticated"`
	Actions       map[string]lfsAction `json:"actions"`
	Error         *struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

func batchObjects(t *testing.T, r apiResult) []lfsObject {
	t.Helper()
	if r.status != 200 || r.header.Get("Content-Type") != "application/vnd.git-lfs+json; charset=utf-8" {
		t.Fatalf("batch: %d %s %s", r.status, r.header.Get("Content-Type"), r.body)
	}
	var resp struct {
		Objects []lfsObject `json:"objects"`
	}
	if err := json.Unmarshal(r.body, &resp); err != nil || len(resp.Objects) != 1 {
		t.Fatalf("batch body %s: %v", r.body, err)
	}
	return resp.Objects
}

type lfsFixture struct {
	*fixture
	batch, publicBatch    string
	dt                    *gitlab.DeployToken
	devWrite, devRead     string
	repWrite, strangerAPI string
	content, oid          string
	size                  int
}

func newLFSFixture(t *testing.T) *lfsFixture {
	t.Helper()
	f := newFixture(t)
	s := f.s
	s.AddProject("opensource/kit")
	s.SetProjectVisibility("opensource/kit", "public")
	s.AddMember(f.svc, "opensource/kit", Maintainer)
	dev, rep, stranger := s.AddUser("dev"), s.AddUser("rep"), s.AddUser("stranger")
	s.AddMember(dev, "platform/app", Developer)
	s.AddMember(dev, "opensource/kit", Developer)
	s.AddMember(rep, "platform/app", Reporter)
	exp := f.clock.Now().Add(time.Hour)
	dt, _, err := newClient(t, s, f.svcPAT).DeployTokens.CreateProjectDeployToken("platform/app", &gitlab.CreateProjectDeployTokenOptions{
		Name: gitlab.Ptr("ci"), ExpiresAt: &exp, Scopes: &[]string{"read_repository"},
	})
	if err != nil {
		t.Fatal(err)
	}
	content := "a large file, in spirit\n"
	sum := sha256.Sum256([]byte(content))
	return &lfsFixture{
		fixture: f, dt: dt,
		batch:       s.URL() + "/platform/app.git/info/lfs/objects/batch",
		publicBatch: s.URL() + "/opensource/kit.git/info/lfs/objects/batch",
		devWrite:    s.CreatePersonalAccessToken(dev, "dev-write", []string{"write_repository"}, nil),
		devRead:     s.CreatePersonalAccessToken(dev, "dev-read", []string{"read_repository"}, nil),
		repWrite:    s.CreatePersonalAccessToken(rep, "rep-write", []string{"write_repository"}, nil),
		strangerAPI: s.CreatePersonalAccessToken(stranger, "stranger", []string{"api"}, nil),
		content:     content, oid: hex.EncodeToString(sum[:]), size: len(content),
	}
}

// upload puts the fixture's object into platform/app as dev would, and
// returns the upload action GitLab handed out.
func (f *lfsFixture) upload(t *testing.T) lfsAction {
	t.Helper()
	objs := batchObjects(t, lfsCall(t, "POST", f.batch, basic("dev", f.devWrite), batchBody("upload", f.oid, f.size)))
	up, ok := objs[0].Actions["upload"]
	if !ok || objs[0].OID != f.oid || objs[0].Size != int64(f.size) {
		t.Fatalf("upload batch answer %+v", objs[0])
	}
	if r := lfsCall(t, "PUT", up.Href, up.Header["Authorization"], f.content); r.status != 200 {
		t.Fatalf("upload PUT: %d %s", r.status, r.body)
	}
	return up
}

func TestLFSBatchUploadAndDownload(t *testing.T) {
	f := newLFSFixture(t)
	s := f.s
	up := f.upload(t)
	if want := s.URL() + "/platform/app.git/gitlab-lfs/objects/" + f.oid + "/" + fmt.Sprint(f.size); up.Href != want {
		t.Fatalf("upload href %q, want %q", up.Href, want)
	}
	if up.Header["Content-Type"] != "application/octet-stream" || up.Header["Transfer-Encoding"] != "chunked" {
		t.Fatalf("upload headers %v", up.Header)
	}
	// A user's actions carry a fresh LFS token of that user, not the token presented.
	raw, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(up.Header["Authorization"], "Basic "))
	user, lfsTok, _ := strings.Cut(string(raw), ":")
	if err != nil || user != "dev" || lfsTok == f.devWrite || !strings.HasPrefix(lfsTok, "eyJ") {
		t.Fatalf("upload Authorization is not an LFS token of dev: user %q", user)
	}
	if got := s.LFSObjects("platform/app"); got[f.oid] != int64(f.size) || len(got) != 1 {
		t.Fatalf("LFS objects of platform/app: %v", got)
	}
	// Uploaded once: the next upload batch has nothing to do for it.
	if objs := batchObjects(t, lfsCall(t, "POST", f.batch, basic("dev", f.devWrite), batchBody("upload", f.oid, f.size))); objs[0].Actions != nil {
		t.Fatalf("an uploaded object got actions again: %+v", objs[0])
	}
	// Workhorse checks the body against the oid and the size.
	if r := lfsCall(t, "PUT", strings.Replace(up.Href, "/"+fmt.Sprint(f.size), "/3", 1), up.Header["Authorization"], "abc"); r.status != 400 || string(r.body) != "SHA256 or size mismatch" {
		t.Fatalf("mismatched upload: %d %s", r.status, r.body)
	}

	// A deploy token downloads; its actions echo its own Authorization header.
	dtAuth := basic(f.dt.Username, f.dt.Token)
	objs := batchObjects(t, lfsCall(t, "POST", f.batch, dtAuth, batchBody("download", f.oid, f.size)))
	down := objs[0].Actions["download"]
	if down.Href != s.URL()+"/platform/app.git/gitlab-lfs/objects/"+f.oid || down.Header["Authorization"] != dtAuth || objs[0].Authenticated {
		t.Fatalf("deploy token download action %+v (authenticated %v)", down, objs[0].Authenticated)
	}
	if r := lfsCall(t, "GET", down.Href, down.Header["Authorization"], ""); r.status != 200 || string(r.body) != f.content || r.header.Get("Content-Type") != "application/octet-stream" {
		t.Fatalf("download: %d %q", r.status, r.body)
	}
	// An object the project does not have: a per-object 404.
	missing := strings.Repeat("0", 64)
	objs = batchObjects(t, lfsCall(t, "POST", f.batch, dtAuth, batchBody("download", missing, 1)))
	if objs[0].Error == nil || objs[0].Error.Code != 404 || objs[0].Error.Message != lfsMissingMessage || objs[0].Actions != nil {
		t.Fatalf("missing object: %+v", objs[0])
	}
	// No objects at all: 404 for the request.
	if r := lfsCall(t, "POST", f.batch, dtAuth, `{"operation":"download","objects":[]}`); r.status != 404 {
		t.Fatalf("empty batch: %d %s", r.status, r.body)
	}

	// A public project: anonymous downloads, "authenticated": true, no header.
	if r := lfsCall(t, "POST", s.URL()+"/opensource/kit.git/info/lfs/objects/batch", basic("dev", f.devWrite), batchBody("upload", f.oid, f.size)); r.status != 200 {
		t.Fatalf("upload batch on the public project: %d %s", r.status, r.body)
	}
	kit := s.URL() + "/opensource/kit.git/gitlab-lfs/objects/" + f.oid + "/" + fmt.Sprint(f.size)
	if r := lfsCall(t, "PUT", kit, basic("dev", f.devWrite), f.content); r.status != 200 {
		t.Fatalf("upload to the public project with the PAT itself: %d %s", r.status, r.body)
	}
	objs = batchObjects(t, lfsCall(t, "POST", f.publicBatch, "", batchBody("download", f.oid, f.size)))
	if !objs[0].Authenticated || objs[0].Actions["download"].Header == nil || len(objs[0].Actions["download"].Header) != 0 {
		t.Fatalf("anonymous download on a public project: %+v", objs[0])
	}
}

func TestLFSAccessFollowsGitLab(t *testing.T) {
	f := newLFSFixture(t)
	s := f.s
	f.upload(t)
	dtAuth := basic(f.dt.Username, f.dt.Token)
	storage := s.URL() + "/platform/app.git/gitlab-lfs/objects/" + f.oid
	for _, tc := range []struct {
		name, method, url, auth, body string
		status                        int
	}{
		{"anonymous download, private project", "POST", f.batch, "", batchBody("download", f.oid, f.size), 401},
		{"anonymous storage download, private project", "GET", storage, "", "", 401},
		{"anonymous upload, public project", "POST", f.publicBatch, "", batchBody("upload", f.oid, f.size), 401},
		{"wrong password", "POST", f.batch, basic("dev", "glpat-wrong"), batchBody("download", f.oid, f.size), 401},
		{"deploy token upload: it may download, so 403", "POST", f.batch, dtAuth, batchBody("upload", f.oid, f.size), 403},
		{"deploy token PUT", "PUT", storage + "/" + fmt.Sprint(f.size), dtAuth, f.content, 403},
		{"read_repository token of a developer: no push_code", "POST", f.batch, basic("dev", f.devRead), batchBody("upload", f.oid, f.size), 403},
		{"write_repository token of a reporter: the role may not push", "POST", f.batch, basic("rep", f.repWrite), batchBody("upload", f.oid, f.size), 403},
		{"reporter downloads", "POST", f.batch, basic("rep", f.repWrite), batchBody("download", f.oid, f.size), 200},
		{"non-member with api: 404, the project stays hidden", "POST", f.batch, basic("stranger", f.strangerAPI), batchBody("download", f.oid, f.size), 404},
		{"unknown operation", "POST", f.batch, basic("dev", f.devWrite), batchBody("delete", f.oid, f.size), 403},
		{"unknown project, valid credentials", "POST", s.URL() + "/platform/nothing.git/info/lfs/objects/batch", basic("dev", f.devWrite), batchBody("download", f.oid, f.size), 404},
		{"unknown project, anonymous", "POST", s.URL() + "/platform/nothing.git/info/lfs/objects/batch", "", batchBody("download", f.oid, f.size), 401},
		{"lock verification needs upload access", "POST", s.URL() + "/platform/app.git/info/lfs/locks/verify", dtAuth, `{}`, 403},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := lfsCall(t, tc.method, tc.url, tc.auth, tc.body)
			if r.status != tc.status {
				t.Fatalf("%d, want %d: %s", r.status, tc.status, r.body)
			}
			switch r.status {
			case 401:
				if r.header.Get("Www-Authenticate") != `Basic realm="GitLab"` || !strings.HasPrefix(string(r.body), "HTTP Basic: Access denied.") {
					t.Fatalf("401 without GitLab's challenge: %v %s", r.header, r.body)
				}
			case 403, 404:
				var m map[string]string
				want := map[int]string{403: "Access forbidden. Check your access level.", 404: "Not found."}[r.status]
				if json.Unmarshal(r.body, &m) != nil || m["message"] != want || m["documentation_url"] != s.URL()+"/help" {
					t.Fatalf("body %s, want message %q", r.body, want)
				}
			}
		})
	}
	if r := lfsCall(t, "POST", s.URL()+"/platform/app.git/info/lfs/locks/verify", basic("dev", f.devWrite), `{"ref":{"name":"refs/heads/main"}}`); r.status != 200 || strings.TrimSpace(string(r.body)) != `{"ours":[],"theirs":[]}` {
		t.Fatalf("locks verify: %d %s", r.status, r.body)
	}
}

// TestLFSTokenOutlivesTheTokenThatAskedForIt: GitLab's LFS token is the
// user's for two hours, for LFS routes of its project only, and revoking the
// access token that asked for it does not end it.
func TestLFSTokenOutlivesTheTokenThatAskedForIt(t *testing.T) {
	f := newLFSFixture(t)
	s := f.s
	up := f.upload(t)
	lfsAuth := up.Header["Authorization"]
	storage := s.URL() + "/platform/app.git/gitlab-lfs/objects/" + f.oid

	pat, _ := s.TokenByName("dev-write")
	s.RevokeToken(KindPersonal, pat.ID)
	if r := lfsCall(t, "POST", f.batch, basic("dev", f.devWrite), batchBody("download", f.oid, f.size)); r.status != 401 {
		t.Fatalf("the revoked PAT still works: %d", r.status)
	}
	if r := lfsCall(t, "GET", storage, lfsAuth, ""); r.status != 200 || string(r.body) != f.content {
		t.Fatalf("the LFS token died with the PAT: %d %s", r.status, r.body)
	}
	// It may upload (push_code comes with every LFS token of a user who may push).
	other := "another object\n"
	sum := sha256.Sum256([]byte(other))
	if r := lfsCall(t, "PUT", s.URL()+"/platform/app.git/gitlab-lfs/objects/"+hex.EncodeToString(sum[:])+"/"+fmt.Sprint(len(other)), lfsAuth, other); r.status != 200 {
		t.Fatalf("LFS token upload: %d %s", r.status, r.body)
	}
	// Not for git itself, nor another project (dev is Developer there too).
	req, _ := http.NewRequest("GET", s.URL()+"/platform/app.git/info/refs?service=git-upload-pack", nil)
	req.Header.Set("Authorization", lfsAuth)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 401 {
		t.Fatalf("an LFS token on git's info/refs: %d, want 401", resp.StatusCode)
	}
	if r := lfsCall(t, "POST", f.publicBatch, lfsAuth, batchBody("upload", f.oid, f.size)); r.status != 401 {
		t.Fatalf("an LFS token of platform/app on opensource/kit: %d, want 401", r.status)
	}
	// Two hours, to the second.
	f.clock.Add(2*time.Hour - time.Second)
	if r := lfsCall(t, "GET", storage, lfsAuth, ""); r.status != 200 {
		t.Fatalf("LFS token before 2h: %d", r.status)
	}
	f.clock.Add(2 * time.Second)
	if r := lfsCall(t, "GET", storage, lfsAuth, ""); r.status != 401 {
		t.Fatalf("LFS token after 2h: %d", r.status)
	}
}
