package gitlabfake

import (
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// GitLab's roles.
const (
	NoAccess   = 0
	Guest      = 10
	Planner    = 15
	Reporter   = 20
	Developer  = 30
	Maintainer = 40
	Owner      = 50
)

// User is a GitLab user (human or project/group bot).
type User struct {
	ID       int64
	Username string
	Email    string
	Admin    bool // instance administrator (root, id 1, is one)
	Bot      bool // project/group access-token bot
}

// Group is a GitLab group or subgroup.
type Group struct {
	ID       int64
	FullPath string
	Name     string
	ParentID int64 // 0 for a top-level group
}

// Project is a GitLab project.
type Project struct {
	ID                int64
	Name              string
	Path              string
	PathWithNamespace string
	NamespaceID       int64
	NamespacePath     string
	Visibility        string // "private" (default), "internal" or "public"
	DefaultBranch     string
	// PrivatePipelines turns the project's "Public pipelines" setting
	// (public_builds, on by default) off: then only Reporters and higher
	// may read its jobs.
	PrivatePipelines bool
}

// AddUser creates a human user (or returns the existing one with that username).
func (s *Server) AddUser(username string) *User {
	s.mu.Lock()
	defer s.mu.Unlock()
	if u, ok := s.usersByName[username]; ok {
		return u
	}
	return s.addUserLocked(username, false)
}

// SetAdmin makes u an instance administrator (or not).
func (s *Server) SetAdmin(u *User, admin bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	u.Admin = admin
}

func (s *Server) addUserLocked(username string, bot bool) *User {
	s.nextUserID++
	u := &User{ID: s.nextUserID, Username: username, Email: username + "@example.com", Bot: bot}
	if bot {
		u.Email = username + "@noreply.127.0.0.1"
	}
	s.users[u.ID] = u
	s.usersByName[username] = u
	return u
}

// AddGroup creates the group at fullPath and any missing parents. Existing groups are returned.
func (s *Server) AddGroup(fullPath string) *Group {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addGroupLocked(strings.Trim(fullPath, "/"))
}

func (s *Server) addGroupLocked(fullPath string) *Group {
	if g, ok := s.groupsByPath[fullPath]; ok {
		return g
	}
	var parentID int64
	if dir := path.Dir(fullPath); dir != "." {
		parentID = s.addGroupLocked(dir).ID
	}
	s.nextNSID++
	g := &Group{ID: s.nextNSID, FullPath: fullPath, Name: path.Base(fullPath), ParentID: parentID}
	s.groups[g.ID] = g
	s.groupsByPath[fullPath] = g
	return g
}

// AddProject creates the project (and its groups) with a bare repository holding one commit
// (README.md) on main. It panics if the repository cannot be created: tests cannot go on anyway.
func (s *Server) AddProject(fullPath string) *Project {
	fullPath = strings.Trim(fullPath, "/")
	s.mu.Lock()
	if p, ok := s.projectsByPath[fullPath]; ok {
		s.mu.Unlock()
		return p
	}
	dir := path.Dir(fullPath)
	if dir == "." {
		s.mu.Unlock()
		panic(fmt.Sprintf("gitlabfake: project %q needs a group (user namespaces are not modelled)", fullPath))
	}
	g := s.addGroupLocked(dir)
	s.nextProjectID++
	s.nextNSID++ // every project has a project namespace too; keep ids apart like GitLab
	p := &Project{
		ID:                s.nextProjectID,
		Name:              path.Base(fullPath),
		Path:              path.Base(fullPath),
		PathWithNamespace: fullPath,
		NamespaceID:       g.ID,
		NamespacePath:     g.FullPath,
		Visibility:        "private",
		DefaultBranch:     "main",
	}
	s.projects[p.ID] = p
	s.projectsByPath[fullPath] = p
	s.mu.Unlock()
	if err := s.initRepo(p); err != nil {
		panic(fmt.Sprintf("gitlabfake: create repository for %s: %v", fullPath, err))
	}
	return p
}

// SetProjectVisibility sets "private", "internal" or "public". Public projects can be cloned
// anonymously, as on GitLab.
func (s *Server) SetProjectVisibility(projectPath, visibility string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if p, ok := s.projectsByPath[strings.Trim(projectPath, "/")]; ok {
		p.Visibility = visibility
	}
}

// SetPrivatePipelines turns the project's "Public pipelines" setting off
// (true) or on (false, GitLab's default).
func (s *Server) SetPrivatePipelines(projectPath string, private bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if p, ok := s.projectsByPath[strings.Trim(projectPath, "/")]; ok {
		p.PrivatePipelines = private
	}
}

// AddMember gives u the access level on the project or group at path. Group membership
// inherits to subgroups and projects.
func (s *Server) AddMember(u *User, fullPath string, accessLevel int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	fullPath = strings.Trim(fullPath, "/")
	var key string
	if p, ok := s.projectsByPath[fullPath]; ok {
		key = projectKey(p.ID)
	} else if g, ok := s.groupsByPath[fullPath]; ok {
		key = groupKey(g.ID)
	} else {
		panic(fmt.Sprintf("gitlabfake: AddMember: no project or group %q", fullPath))
	}
	s.setMemberLocked(key, u.ID, accessLevel)
}

// RemoveMember takes u's direct membership of the project or group at path
// away (inherited memberships stay), as an owner would in the UI.
func (s *Server) RemoveMember(u *User, fullPath string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	fullPath = strings.Trim(fullPath, "/")
	if p, ok := s.projectsByPath[fullPath]; ok {
		delete(s.members[projectKey(p.ID)], u.ID)
	} else if g, ok := s.groupsByPath[fullPath]; ok {
		delete(s.members[groupKey(g.ID)], u.ID)
	}
}

func (s *Server) setMemberLocked(key string, userID int64, level int) {
	m := s.members[key]
	if m == nil {
		m = map[int64]int{}
		s.members[key] = m
	}
	m[userID] = level
}

func projectKey(id int64) string { return fmt.Sprintf("p:%d", id) }
func groupKey(id int64) string   { return fmt.Sprintf("g:%d", id) }

// groupAccessLocked is the user's max access on g from g's and its ancestors' memberships.
func (s *Server) groupAccessLocked(u *User, g *Group) int {
	best := NoAccess
	for g != nil {
		if lvl := s.members[groupKey(g.ID)][u.ID]; lvl > best {
			best = lvl
		}
		g = s.groups[g.ParentID]
	}
	return best
}

// projectAccessLocked is the user's max access on p (direct or inherited).
func (s *Server) projectAccessLocked(u *User, p *Project) int {
	best := s.members[projectKey(p.ID)][u.ID]
	if lvl := s.groupAccessLocked(u, s.groups[p.NamespaceID]); lvl > best {
		best = lvl
	}
	return best
}

// canReadProjectLocked: members (guest+) and admins see private projects; everyone signed in
// sees internal ones; everyone sees public ones.
func (s *Server) canReadProjectLocked(u *User, p *Project) bool {
	switch {
	case p.Visibility == "public":
		return true
	case u == nil:
		return false
	case p.Visibility == "internal" && !u.Bot:
		return true
	case u.Admin:
		return true
	}
	return s.projectAccessLocked(u, p) >= Guest
}

func (s *Server) canReadGroupLocked(u *User, g *Group) bool {
	if u == nil {
		return false
	}
	if u.Admin {
		return true
	}
	if s.groupAccessLocked(u, g) >= Guest {
		return true
	}
	// Members of a project (or subgroup) below a private group can see the group.
	for _, p := range s.projects {
		if s.isUnderLocked(p.NamespacePath, g.FullPath) && s.projectAccessLocked(u, p) >= Guest {
			return true
		}
	}
	return false
}

func (s *Server) isUnderLocked(childPath, groupPath string) bool {
	return childPath == groupPath || strings.HasPrefix(childPath, groupPath+"/")
}

// effectiveProjectLevelLocked counts admins as owners for permission checks.
func (s *Server) effectiveProjectLevelLocked(u *User, p *Project) int {
	if u.Admin {
		return Owner
	}
	return s.projectAccessLocked(u, p)
}

func (s *Server) effectiveGroupLevelLocked(u *User, g *Group) int {
	if u.Admin {
		return Owner
	}
	return s.groupAccessLocked(u, g)
}

// roleName is GitLab's human_access, lower-cased, as in the user_access_level claim.
func roleName(level int) string {
	switch level {
	case Guest:
		return "guest"
	case Planner:
		return "planner"
	case Reporter:
		return "reporter"
	case Developer:
		return "developer"
	case Maintainer:
		return "maintainer"
	case Owner:
		return "owner"
	}
	return ""
}

// UserByName returns the user (human or bot) with that username.
func (s *Server) UserByName(username string) (*User, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	u, ok := s.usersByName[username]
	return u, ok
}

// ProjectByPath returns the project with that full path.
func (s *Server) ProjectByPath(fullPath string) (*Project, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.projectsByPath[strings.Trim(fullPath, "/")]
	return p, ok
}

// MoveProject renames or transfers a project to newPath (its group is
// created if needed) as GitLab does: the id stays, the repository moves, and
// the old path stays behind as a redirect route, so the API still finds the
// project by it.
func (s *Server) MoveProject(oldPath, newPath string) error {
	oldPath, newPath = strings.Trim(oldPath, "/"), strings.Trim(newPath, "/")
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.projectsByPath[oldPath]
	if !ok {
		return fmt.Errorf("gitlabfake: no project %q", oldPath)
	}
	if _, taken := s.projectsByPath[newPath]; taken {
		return fmt.Errorf("gitlabfake: %q is taken", newPath)
	}
	from := s.repoDir(p)
	g := s.addGroupLocked(path.Dir(newPath))
	p.Path, p.Name, p.PathWithNamespace = path.Base(newPath), path.Base(newPath), newPath
	p.NamespaceID, p.NamespacePath = g.ID, g.FullPath
	if err := os.MkdirAll(filepath.Dir(s.repoDir(p)), 0o755); err != nil {
		return err
	}
	if err := os.Rename(from, s.repoDir(p)); err != nil {
		return err
	}
	delete(s.projectsByPath, oldPath)
	s.projectsByPath[newPath] = p
	s.projectRedirects[strings.ToLower(oldPath)] = p.ID
	delete(s.projectRedirects, strings.ToLower(newPath))
	return nil
}
