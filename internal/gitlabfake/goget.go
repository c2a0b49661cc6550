package gitlabfake

import (
	"io"
	"net/http"
	"strings"

	"gltoken.dev/gltoken/internal/gitlabpath"
)

// Go's remote import path discovery (`go get`, `go mod download`): any
// request with ?go-get=1 is answered as GitLab's Rack middleware
// Gitlab::Middleware::Go (lib/gitlab/middleware/go.rb) does, before routing:
//
//   - The project is the longest prefix of the path that is a valid project
//     path and names a project, ignoring case, or a redirect route a move
//     left (a module path may go deeper than its project: group/proj/pkg).
//   - It is answered with its full path when it is public, or when the
//     request's HTTP Basic credentials pass find_for_git_client with the
//     read_project ability and the actor may read the project. read_project
//     comes only with the api and read_api scopes: a deploy token, or a token
//     scoped read_repository, never passes.
//   - Otherwise a request that carries an Authorization header (any scheme,
//     valid or not) gets 404 text/plain "Go package not found or access
//     denied. …", and one without gets 200 with the path's first two
//     segments as if they were the project, so that the existence of a
//     private project is never revealed. For a private project in a subgroup
//     that guess names the wrong repository: only an authenticated go-get
//     finds it (go sends credentials only from .netrc or a GOAUTH command;
//     GOAUTH=git asks git only after a 4xx, which this answer never is).
//
// The body is exactly GitLab's: <html><head><meta name="go-import"
// content="HOST/PATH git URL/PATH.git"></head><body>go get HOST/PATH</body></html>.
// Current GitLab sends no go-source tag (older versions did).
// Not modelled: SSH as the enabled git protocol (the repository URL is then
// ssh://), the IP ban after failed attempts (403), a project without a
// repository (404; every project here has one).

const goGetNotFound = "Go package not found or access denied. If you are trying to access a private project, ensure your ~/.netrc file has credentials so the go toolchain can authenticate. See %s/help/user/project/use_project_as_go_package.md for details."

// goMaxSegments is the middleware's cap: a group, 20 subgroups and a project.
const goMaxSegments = 22

// serveGoGet answers a ?go-get=1 request; it reports false for any other.
func (s *Server) serveGoGet(w http.ResponseWriter, r *http.Request) bool {
	vals, ok := r.URL.Query()["go-get"]
	if !ok || rubyToI(vals[len(vals)-1]) != 1 || r.URL.EscapedPath() == "" {
		return false
	}
	// PATH_INFO as Rack has it: not unescaped.
	pathInfo := strings.TrimPrefix(r.URL.EscapedPath(), "/")
	s.mu.Lock()
	p := s.goProjectLocked(pathInfo)
	readable := p != nil && s.goCanReadLocked(r, p)
	var full string
	if readable {
		full = p.PathWithNamespace
	}
	s.mu.Unlock()

	switch {
	case readable:
		s.writeGoImport(w, full)
	case r.Header.Get("Authorization") != "":
		s.writeGoNotFound(w)
	default:
		segs := strings.Split(pathInfo, "/")
		if len(segs) < 2 {
			s.writeGoNotFound(w)
			return true
		}
		s.writeGoImport(w, segs[0]+"/"+segs[1])
	}
	return true
}

// goProjectLocked is the middleware's project_for_path: the project named by
// the longest valid project prefix of the path, or a redirect route to one.
func (s *Server) goProjectLocked(pathInfo string) *Project {
	segs := strings.Split(pathInfo, "/")
	// The middleware's regex takes the longest prefix that is a valid
	// project path (every segment before it a valid namespace segment).
	n := 0
	for k := 2; k <= len(segs); k++ {
		if !gitlabpath.ValidProject(strings.Join(segs[:k-1], "/") + "/x") {
			break // segs[:k-1] are not all namespace segments: the match ends
		}
		if gitlabpath.ValidProject(strings.Join(segs[:k], "/")) {
			n = k
		}
	}
	if n == 0 {
		return nil
	}
	if n > goMaxSegments {
		n = goMaxSegments
	}
	var candidates []string
	for k := n; k >= 2; k-- {
		candidates = append(candidates, strings.ToLower(strings.Join(segs[:k], "/")))
	}
	for _, c := range candidates {
		for path, p := range s.projectsByPath {
			if strings.ToLower(path) == c {
				return p
			}
		}
	}
	for _, c := range candidates {
		if id, ok := s.projectRedirects[c]; ok {
			return s.projects[id]
		}
	}
	return nil
}

// goCanReadLocked is the middleware's can_read_project?.
func (s *Server) goCanReadLocked(r *http.Request, p *Project) bool {
	if p.Visibility == "public" {
		return true
	}
	login, password, ok := r.BasicAuth()
	if !ok || (login == "" && password == "") {
		return false
	}
	actor := s.findForGitClientLocked(login, password, p)
	if actor == nil || !actor.abilities[abReadProject] {
		return false
	}
	return s.actorCanLocked(actor, p, abReadProject)
}

func (s *Server) writeGoImport(w http.ResponseWriter, fullPath string) {
	projectURL := s.url + "/" + fullPath
	root := strings.TrimPrefix(strings.TrimPrefix(projectURL, "https://"), "http://")
	body := `<html><head><meta name="go-import" content="` + railsEscape(root+" git "+projectURL+".git") +
		`"></head><body>` + railsEscape("go get "+root) + `</body></html>`
	w.Header().Set("Content-Type", "text/html")
	w.WriteHeader(http.StatusOK)
	_, _ = io.WriteString(w, body)
}

func (s *Server) writeGoNotFound(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "text/plain")
	w.WriteHeader(http.StatusNotFound)
	_, _ = io.WriteString(w, strings.Replace(goGetNotFound, "%s", s.url, 1))
}

// railsEscape is ERB::Util.html_escape, which content_tag and tag apply.
var railsEscape = strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;", `"`, "&quot;", "'", "&#39;").Replace

// rubyToI is Ruby's String#to_i: leading whitespace, an optional sign, then
// the leading decimal digits ("1abc" is 1, "" and "x" are 0).
func rubyToI(v string) int {
	v = strings.TrimLeft(v, " \t\n\v\f\r")
	neg := false
	if v != "" && (v[0] == '+' || v[0] == '-') {
		neg = v[0] == '-'
		v = v[1:]
	}
	n := 0
	for i := 0; i < len(v) && v[i] >= '0' && v[i] <= '9'; i++ {
		if n < 1<<30 {
			n = n*10 + int(v[i]-'0')
		}
	}
	if neg {
		return -n
	}
	return n
}
