package gitlabfake

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/http/cgi"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
)

func findGit() (string, error) {
	p, err := exec.LookPath("git")
	if err != nil {
		return "", fmt.Errorf("gitlabfake: the git binary is required: %w", err)
	}
	return p, nil
}

func (s *Server) repoDir(p *Project) string {
	return filepath.Join(s.repoRoot, filepath.FromSlash(p.PathWithNamespace)+".git")
}

// gitEnv isolates git from the user's configuration.
func (s *Server) gitEnv(extra ...string) []string {
	env := []string{
		"PATH=" + os.Getenv("PATH"),
		"HOME=" + s.repoRoot,
		"GIT_CONFIG_NOSYSTEM=1",
		"GIT_CONFIG_GLOBAL=" + os.DevNull,
		"GIT_AUTHOR_NAME=GitLab Stand-in", "GIT_AUTHOR_EMAIL=standin@example.com",
		"GIT_COMMITTER_NAME=GitLab Stand-in", "GIT_COMMITTER_EMAIL=standin@example.com",
	}
	return append(env, extra...)
}

func (s *Server) git(dir string, stdin []byte, extraEnv []string, args ...string) (string, error) {
	cmd := exec.Command(s.gitPath, append([]string{"--git-dir", dir}, args...)...)
	cmd.Env = s.gitEnv(extraEnv...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("git %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return strings.TrimSpace(out.String()), nil
}

// preReceiveHook enforces GitLab's default branch protection ("fully protected": only
// maintainers push to the default branch). The stand-in passes the pusher's role in GL_ACCESS_LEVEL.
const preReceiveHook = `#!/bin/sh
# GitLab stand-in: default branch protection (maintainers only).
while read old new ref; do
  if [ "$ref" = "refs/heads/%s" ] && [ "${GL_ACCESS_LEVEL:-0}" -lt 40 ]; then
    echo "GitLab: You are not allowed to push code to protected branches on this project." >&2
    exit 1
  fi
done
exit 0
`

func (s *Server) initRepo(p *Project) error {
	dir := s.repoDir(p)
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return err
	}
	cmd := exec.Command(s.gitPath, "init", "--quiet", "--bare", "--initial-branch="+p.DefaultBranch, dir)
	cmd.Env = s.gitEnv()
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("git init: %w: %s", err, out)
	}
	hook := filepath.Join(dir, "hooks", "pre-receive")
	if err := os.WriteFile(hook, []byte(fmt.Sprintf(preReceiveHook, p.DefaultBranch)), 0o755); err != nil {
		return err
	}
	if _, err := s.git(dir, nil, nil, "rev-parse", "--verify", "-q", "refs/heads/"+p.DefaultBranch); err == nil {
		return nil // an existing repository (a reused RepoRoot) keeps its history
	}
	return s.commitFile(p, "README.md", "# "+p.Name+"\n")
}

// CommitFile adds (or replaces) file with content in a new commit on the default branch.
func (s *Server) CommitFile(projectPath, file, content string) error {
	s.mu.Lock()
	p := s.projectsByPath[strings.Trim(projectPath, "/")]
	s.mu.Unlock()
	if p == nil {
		return fmt.Errorf("gitlabfake: no project %q", projectPath)
	}
	return s.commitFile(p, file, content)
}

func (s *Server) commitFile(p *Project, file, content string) error {
	s.gitMu.Lock()
	defer s.gitMu.Unlock()
	dir := s.repoDir(p)
	ref := "refs/heads/" + p.DefaultBranch
	parent, _ := s.git(dir, nil, nil, "rev-parse", "--verify", "-q", ref)
	idx, err := os.CreateTemp("", "gitlabfake-index-")
	if err != nil {
		return err
	}
	idxPath := idx.Name()
	_ = idx.Close()
	_ = os.Remove(idxPath)
	defer os.Remove(idxPath)
	env := []string{"GIT_INDEX_FILE=" + idxPath}
	if parent != "" {
		if _, err := s.git(dir, nil, env, "read-tree", parent); err != nil {
			return err
		}
	}
	blob, err := s.git(dir, []byte(content), nil, "hash-object", "-w", "--stdin")
	if err != nil {
		return err
	}
	if _, err := s.git(dir, nil, env, "update-index", "--add", "--cacheinfo", "100644,"+blob+","+file); err != nil {
		return err
	}
	tree, err := s.git(dir, nil, env, "write-tree")
	if err != nil {
		return err
	}
	args := []string{"commit-tree", tree, "-m", "Add " + file}
	if parent != "" {
		args = append(args, "-p", parent)
	}
	commit, err := s.git(dir, nil, nil, args...)
	if err != nil {
		return err
	}
	_, err = s.git(dir, nil, nil, "update-ref", ref, commit, parent)
	return err
}

// GitLab's git-over-HTTP messages (lib/gitlab/git_access.rb, GitHttpClientController).
const (
	msgProjectNotFound = "The project you were looking for could not be found or you don't have permission to view it."
	msgAuthDownload    = "You are not allowed to download code."
	msgAuthUpload      = "You are not allowed to upload code."
	msgDownload        = "You are not allowed to download code from this project."
	msgPush            = "You are not allowed to push code to this project."
)

func (s *Server) basicDenied(w http.ResponseWriter) {
	w.Header().Set("WWW-Authenticate", `Basic realm="GitLab"`)
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(http.StatusUnauthorized)
	_, _ = io.WriteString(w, "HTTP Basic: Access denied. If a password was provided for Git authentication, the password was incorrect or you're required to use a token instead of a password. If a token was provided, it was either incorrect, expired, or improperly scoped. See "+s.url+"/help/topics/git/troubleshooting_git.md#error-on-git-fetch-http-basic-access-denied\n")
}

func gitError(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(status)
	_, _ = io.WriteString(w, msg+"\n")
}

// serveGit handles git smart HTTP. It reports false if the path is not a git route.
func (s *Server) serveGit(w http.ResponseWriter, r *http.Request) bool {
	p := r.URL.Path
	var repoPath, suffix string
	for _, sfx := range []string{"/info/refs", "/git-upload-pack", "/git-receive-pack"} {
		if strings.HasSuffix(p, sfx) && len(p) > len(sfx)+1 {
			repoPath, suffix = strings.TrimPrefix(strings.TrimSuffix(p, sfx), "/"), sfx
			break
		}
	}
	if suffix == "" || strings.HasPrefix(p, "/api/") {
		return false
	}
	repoPath = strings.TrimSuffix(repoPath, ".git")
	var service string
	switch suffix {
	case "/info/refs":
		if r.Method != http.MethodGet {
			return false
		}
		service = r.URL.Query().Get("service")
		if service != "git-upload-pack" && service != "git-receive-pack" {
			// Dumb HTTP is not served by GitLab.
			gitError(w, http.StatusForbidden, "Unsupported service")
			return true
		}
	default:
		if r.Method != http.MethodPost {
			return false
		}
		service = strings.TrimPrefix(suffix, "/")
	}
	push := service == "git-receive-pack"

	login, password, hasAuth := r.BasicAuth()
	s.mu.Lock()
	project := s.projectsByPath[repoPath]
	var actor *gitActor
	if hasAuth {
		actor = s.findForGitClientLocked(login, password, project)
		if actor == nil {
			s.mu.Unlock()
			s.basicDenied(w)
			return true
		}
	} else {
		actor = &gitActor{abilities: abilitiesForScopes([]string{"read_api"})} // anonymous: read-only
	}
	if project == nil || (actor.anonymous() && (push || project.Visibility != "public")) {
		s.mu.Unlock()
		if actor.anonymous() {
			s.basicDenied(w) // ask for credentials before revealing anything
		} else {
			gitError(w, http.StatusNotFound, msgProjectNotFound)
		}
		return true
	}
	need := abDownloadCode
	if push {
		need = abPushCode
	}
	if !actor.abilities[need] {
		s.mu.Unlock()
		if push {
			gitError(w, http.StatusForbidden, msgAuthUpload)
		} else {
			gitError(w, http.StatusForbidden, msgAuthDownload)
		}
		return true
	}
	if actor.deploy == nil && !actor.anonymous() && !s.actorCanLocked(actor, project, abReadProject) {
		s.mu.Unlock()
		gitError(w, http.StatusNotFound, msgProjectNotFound)
		return true
	}
	if !s.actorCanLocked(actor, project, need) {
		s.mu.Unlock()
		if push {
			gitError(w, http.StatusForbidden, msgPush)
		} else {
			gitError(w, http.StatusForbidden, msgDownload)
		}
		return true
	}
	level := s.pushLevelLocked(actor, project)
	remoteUser := actor.name()
	s.mu.Unlock()

	if remoteUser == "" {
		remoteUser = "anonymous"
	}
	// Hand the request to the real git http-backend with the canonical path.
	r2 := r.Clone(r.Context())
	r2.URL.Path = "/" + project.PathWithNamespace + ".git" + suffix
	r2.URL.RawPath = ""
	h := &cgi.Handler{
		Path: s.gitPath,
		Args: []string{"http-backend"},
		Root: "/",
		Env: append(s.gitEnv(),
			"GIT_PROJECT_ROOT="+s.repoRoot,
			"GIT_HTTP_EXPORT_ALL=1",
			"REMOTE_USER="+remoteUser,
			"GL_ACCESS_LEVEL="+strconv.Itoa(level),
		),
		Stderr: io.Discard,
	}
	if push {
		s.gitMu.Lock()
		defer s.gitMu.Unlock()
	}
	h.ServeHTTP(w, r2)
	return true
}
