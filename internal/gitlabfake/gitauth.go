package gitlabfake

import (
	"slices"

	"gltoken.dev/gltoken/internal/fingerprint"
)

// Abilities (lib/gitlab/auth.rb abilities_for_scopes).
const (
	abReadProject          = "read_project"
	abDownloadCode         = "download_code"
	abPushCode             = "push_code"
	abReadContainerImage   = "read_container_image"
	abCreateContainerImage = "create_container_image"
	abAdminContainerImage  = "admin_container_image"
)

func abilitiesForScopes(scopes []string) map[string]bool {
	full := []string{abReadProject, abDownloadCode, abReadContainerImage, abPushCode, abCreateContainerImage, abAdminContainerImage}
	readOnly := []string{abReadProject, abDownloadCode, abReadContainerImage}
	by := map[string][]string{
		"api":              full,
		"read_api":         readOnly,
		"read_registry":    {abReadContainerImage},
		"write_registry":   {abCreateContainerImage},
		"read_repository":  {abDownloadCode},
		"write_repository": {abDownloadCode, abPushCode},
	}
	out := map[string]bool{}
	for _, sc := range scopes {
		for _, a := range by[sc] {
			out[a] = true
		}
	}
	return out
}

// gitActor is the result of Gitlab::Auth.find_for_git_client.
type gitActor struct {
	user      *User  // PAT/access-token user; nil for deploy tokens and anonymous
	deploy    *token // deploy token
	tok       *token
	abilities map[string]bool
	login     string
	oauth     bool // an OAuth access token
}

func (a *gitActor) anonymous() bool { return a.user == nil && a.deploy == nil }

func (a *gitActor) name() string {
	switch {
	case a.user != nil:
		return a.user.Username
	case a.deploy != nil:
		return a.deploy.Username
	}
	return ""
}

// findForGitClientLocked reproduces the credential checks of find_for_git_client that exist
// here, in its order: OAuth access tokens (any username), personal/project/group access tokens
// with any non-blank username, then deploy tokens whose username equals the login. Passwords
// of users and CI job tokens are not modelled and fail; LFS tokens are checked on the LFS
// routes only (lfsTokenActorLocked), as GitLab does. project may be nil
// (registry token requests).
func (s *Server) findForGitClientLocked(login, password string, project *Project) *gitActor {
	if password == "" {
		return nil
	}
	if a := s.oauthActorLocked(login, password); a != nil {
		return a
	}
	t := s.tokenByHash[fingerprint.Of(password)]
	if t == nil {
		return nil
	}
	switch {
	case isPAT(t.Kind):
		if !s.patActiveLocked(t) {
			return nil
		}
		hasScope := false
		for _, sc := range t.Scopes {
			if slices.Contains(personalScopes, sc) {
				hasScope = true
			}
		}
		if !hasScope {
			return nil
		}
		u := s.users[t.UserID]
		if u == nil {
			return nil
		}
		if project != nil && u.Bot && !s.canReadProjectLocked(u, project) {
			return nil
		}
		now := s.now().UTC()
		t.LastUsedAt = &now
		return &gitActor{user: u, tok: t, abilities: abilitiesForScopes(t.Scopes), login: login}
	case isDeploy(t.Kind):
		if !s.deployActiveLocked(t) || login == "" || login != t.Username {
			return nil
		}
		if project != nil && !s.deployHasAccessLocked(t, project) {
			return nil
		}
		return &gitActor{deploy: t, tok: t, abilities: abilitiesForScopes(t.Scopes), login: login}
	}
	return nil
}

// deployHasAccessLocked: a project token reaches its project, a group token every project in
// the group and its subgroups.
func (s *Server) deployHasAccessLocked(t *token, p *Project) bool {
	if !s.deployActiveLocked(t) {
		return false
	}
	if t.Kind == KindDeployProject {
		return t.OwnerPath == p.PathWithNamespace
	}
	return s.isUnderLocked(p.NamespacePath, t.OwnerPath)
}

// actorCanLocked is the project-level policy check for an ability the credential carries.
func (s *Server) actorCanLocked(a *gitActor, p *Project, ability string) bool {
	if a.deploy != nil {
		return s.deployHasAccessLocked(a.deploy, p) && a.abilities[ability]
	}
	public := p.Visibility == "public"
	internal := p.Visibility == "internal"
	if a.user == nil {
		return public && (ability == abDownloadCode || ability == abReadContainerImage || ability == abReadProject)
	}
	level := s.effectiveProjectLevelLocked(a.user, p)
	switch ability {
	case abReadProject:
		return s.canReadProjectLocked(a.user, p)
	case abDownloadCode, abReadContainerImage:
		return level >= Reporter || public || (internal && !a.user.Bot)
	case abPushCode, abCreateContainerImage:
		return level >= Developer
	case abAdminContainerImage:
		return level >= Maintainer
	}
	return false
}

// pushLevelLocked is the role used by the protected-branch hook.
func (s *Server) pushLevelLocked(a *gitActor, p *Project) int {
	if a.user == nil {
		return NoAccess
	}
	return s.effectiveProjectLevelLocked(a.user, p)
}
