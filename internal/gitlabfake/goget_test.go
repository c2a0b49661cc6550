package gitlabfake

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	gitlab "gitlab.com/gitlab-org/api/client-go"
)

// goGet sends one discovery request as the go command does (GET
// PATH?go-get=1), with Basic credentials when user or pass is set, or a raw
// Authorization header.
func goGet(t *testing.T, s *Server, path, user, pass, authorization string) (int, string, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, s.URL()+"/"+path+"?go-get=1", nil)
	if err != nil {
		t.Fatal(err)
	}
	if user != "" || pass != "" {
		req.SetBasicAuth(user, pass)
	}
	if authorization != "" {
		req.Header.Set("Authorization", authorization)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header.Get("Content-Type"), string(b)
}

// goImportBody is GitLab's answer, byte for byte (spec/lib/gitlab/middleware/go_spec.rb).
func goImportBody(s *Server, fullPath string) string {
	root := strings.TrimPrefix(s.URL(), "http://") + "/" + fullPath
	return `<html><head><meta name="go-import" content="` + root + ` git ` + s.URL() + "/" + fullPath + `.git"></head><body>go get ` + root + `</body></html>`
}

func TestGoGetAnswersAsGitLabsMiddleware(t *testing.T) {
	f := newFixture(t)
	s := f.s
	s.AddProject("platform/lib")
	s.AddProject("platform/tools/cli")
	s.AddProject("opensource/kit")
	s.SetProjectVisibility("opensource/kit", "public")
	c := newClient(t, s, f.svcPAT)
	s.AddMember(f.svc, "platform/tools/cli", Maintainer)
	s.AddMember(f.svc, "platform/lib", Maintainer)

	exp := f.clock.Now().Add(time.Hour)
	dt, _, err := c.DeployTokens.CreateProjectDeployToken("platform/tools/cli", &gitlab.CreateProjectDeployTokenOptions{
		Name: gitlab.Ptr("ci"), ExpiresAt: &exp, Scopes: &[]string{"read_repository"},
	})
	if err != nil {
		t.Fatal(err)
	}
	alice := s.AddUser("alice")
	s.AddMember(alice, "platform/tools/cli", Reporter)
	readAPI := s.CreatePersonalAccessToken(alice, "go", []string{"read_api"}, nil)
	readRepo := s.CreatePersonalAccessToken(alice, "git", []string{"read_repository"}, nil)
	bob := s.AddUser("bob") // no membership
	bobAPI := s.CreatePersonalAccessToken(bob, "go", []string{"api"}, nil)

	notFound := "Go package not found or access denied. If you are trying to access a private project, ensure your ~/.netrc file has credentials so the go toolchain can authenticate. See " + s.URL() + "/help/user/project/use_project_as_go_package.md for details."
	for _, tc := range []struct {
		name, path, user, pass, authz string
		status                        int
		project                       string // the answered path; "" for the 404
	}{
		{name: "public project, subpackage, anonymous", path: "opensource/kit/pkg/x", status: 200, project: "opensource/kit"},
		{name: "public project, invalid credentials", path: "opensource/kit", user: "x", pass: "y", status: 200, project: "opensource/kit"},
		{name: "private two-segment project, anonymous: the guess is right", path: "platform/lib/sub", status: 200, project: "platform/lib"},
		{name: "private subgroup project, anonymous: the first two segments", path: "platform/tools/cli/sub", status: 200, project: "platform/tools"},
		{name: "nonexistent project, anonymous: the same guess", path: "nobody/nothing/deep", status: 200, project: "nobody/nothing"},
		{name: "one segment, anonymous", path: "platform", status: 404},
		{name: "invalid credentials", path: "platform/tools/cli", user: "x", pass: "y", status: 404},
		{name: "Bearer header", path: "platform/tools/cli", authz: "Bearer " + readAPI, status: 404},
		{name: "deploy token: read_repository has no read_project", path: "platform/tools/cli/sub", user: dt.Username, pass: dt.Token, status: 404},
		{name: "read_repository token of a member", path: "platform/tools/cli", user: "alice", pass: readRepo, status: 404},
		{name: "read_api token of a member, any username", path: "platform/tools/cli/sub/deeper", user: "anything", pass: readAPI, status: 200, project: "platform/tools/cli"},
		{name: "path in another case", path: "Platform/Tools/CLI", user: "alice", pass: readAPI, status: 200, project: "platform/tools/cli"},
		{name: "a segment that is no path ends the match", path: "platform/tools/cli/---sub", user: "alice", pass: readAPI, status: 200, project: "platform/tools/cli"},
		{name: "api token of a non-member", path: "platform/tools/cli", user: "bob", pass: bobAPI, status: 404},
		{name: "credentials on a project that does not exist", path: "platform/nothing", user: "alice", pass: readAPI, status: 404},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, ctype, body := goGet(t, s, tc.path, tc.user, tc.pass, tc.authz)
			if status != tc.status {
				t.Fatalf("status %d, want %d: %s", status, tc.status, body)
			}
			if tc.project == "" {
				if ctype != "text/plain" || body != notFound {
					t.Fatalf("404 answer %q %q", ctype, body)
				}
				return
			}
			if ctype != "text/html" || body != goImportBody(s, tc.project) {
				t.Fatalf("answer %q:\n%s\nwant\n%s", ctype, body, goImportBody(s, tc.project))
			}
		})
	}

	// A moved project is found under its old path and answered with its new one.
	if err := s.MoveProject("platform/tools/cli", "platform/cli"); err != nil {
		t.Fatal(err)
	}
	if status, _, body := goGet(t, s, "platform/tools/cli/sub", "alice", readAPI, ""); status != 200 || body != goImportBody(s, "platform/cli") {
		t.Fatalf("moved project: %d %s", status, body)
	}
}

func TestGoGetOnlyForGoGetOne(t *testing.T) {
	f := newFixture(t)
	// The raw path is echoed, HTML-escaped as Rails does.
	if status, _, body := goGet(t, f.s, "it's/a%3Cb", "", "", ""); status != 200 || !strings.Contains(body, `content="`+strings.TrimPrefix(f.s.URL(), "http://")+`/it&#39;s/a%3Cb git `) {
		t.Fatalf("escaping: %d %s", status, body)
	}
	for _, q := range []string{"go-get=1abc", "go-get=01", "go-get=0&go-get=1"} {
		resp, err := http.Get(f.s.URL() + "/platform/app?" + q)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/html" {
			t.Errorf("?%s: %d %s, want the go-import page (Ruby's to_i, the last value)", q, resp.StatusCode, resp.Header.Get("Content-Type"))
		}
	}
	for _, q := range []string{"go-get=0", "go-get=2", "go-get=1&go-get=0", "go-get="} {
		resp, err := http.Get(f.s.URL() + "/platform/app?" + q)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotImplemented {
			t.Errorf("?%s: %d, want routing as usual (501 for the web page)", q, resp.StatusCode)
		}
	}
	if got := rubyToI("  -12x"); got != -12 {
		t.Errorf("rubyToI = %d", got)
	}
}
