package gitlabfake

import (
	"encoding/json"
	"net/http"
	"strings"
	"time"

	"gltoken.dev/gltoken/internal/gitlabpath"
)

// StandinIDTokenLifetime is how long an ID token from /-/standin/id_token
// lasts when the request names no timeout: GitLab's default job timeout.
const StandinIDTokenLifetime = time.Hour

// handleStandinProjects is a STAND-IN-ONLY route (an administrator would
// create the project in GitLab's UI): it creates a project while the
// stand-in runs, for trying things by hand. Loopback clients only.
//
//	POST /-/standin/projects  path=group/project [&maintainer=USER ...] [&developer=USER ...] [&reporter=USER ...]
//
// Users named that do not exist yet are created. The answer is the project
// as GET /api/v4/projects/:id shows it, 201 Created (200 when it existed:
// the memberships are still added).
func (s *Server) handleStandinProjects(w http.ResponseWriter, r *http.Request, _ params) {
	if !isLoopbackRemote(r) {
		writeMessage(w, http.StatusForbidden, "stand-in: projects is for loopback clients only")
		return
	}
	if err := r.ParseForm(); err != nil {
		writeMessage(w, http.StatusBadRequest, "stand-in: "+err.Error())
		return
	}
	path := strings.Trim(r.PostForm.Get("path"), "/")
	if err := gitlabpath.CheckProject(path); err != nil {
		writeMessage(w, http.StatusBadRequest, "stand-in: path: "+err.Error())
		return
	}
	s.mu.Lock()
	existed := s.projectsByPath[path] != nil
	s.mu.Unlock()
	p := s.AddProject(path)
	for _, m := range []struct {
		key   string
		level int
	}{{"reporter", Reporter}, {"developer", Developer}, {"maintainer", Maintainer}} {
		for _, name := range r.PostForm[m.key] {
			s.mu.Lock()
			u := s.usersByName[name]
			s.mu.Unlock()
			if u == nil {
				u = s.AddUser(name)
			}
			s.AddMember(u, path, m.level)
		}
	}
	status := http.StatusCreated
	if existed {
		status = http.StatusOK
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"id": p.ID, "path_with_namespace": p.PathWithNamespace, "web_url": s.url + "/" + p.PathWithNamespace, "http_url_to_repo": s.url + "/" + p.PathWithNamespace + ".git"})
}
