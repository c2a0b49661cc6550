package gitlabfake

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"gltoken.dev/gltoken/internal/gitlabpath"
)

// Git LFS, as GitLab serves it over HTTP (checked against GitLab's source:
// config/routes/git_http.rb, app/controllers/repositories/lfs_api_controller.rb,
// lfs_storage_controller.rb, lfs_locks_api_controller.rb,
// app/controllers/concerns/lfs_request.rb, git_http_client_controller.rb,
// lib/gitlab/auth.rb, lib/gitlab/lfs_token.rb):
//
//	POST <project>.git/info/lfs/objects/batch           the batch API
//	GET  <project>.git/gitlab-lfs/objects/<oid>         download (href of a download action)
//	PUT  <project>.git/gitlab-lfs/objects/<oid>/<size>  upload (href of an upload action; Workhorse)
//	POST <project>.git/info/lfs/locks/verify            lock verification (no locks are ever held)
//
// Credentials are those of git over HTTP (find_for_git_client): deploy
// tokens, personal/project/group access tokens, OAuth tokens, and on these
// routes only, LFS tokens. Download needs the download_code ability
// (read_repository, write_repository, read_api, api) and read access, or a
// deploy token with read_repository on the project, or a public project
// (anonymous too). Upload needs the push_code ability (write_repository,
// api) of a user who may push (Developer or higher); a deploy token never
// uploads. Without credentials on a private project: 401 with
// WWW-Authenticate Basic; with credentials that may download but not do
// this: 403 "Access forbidden. Check your access level."; otherwise 404
// "Not found.", so that nothing reveals a project the caller cannot see.
//
// The batch answer's actions carry an Authorization header. For a request
// authenticated as a user (any token of a person or a bot) it is a fresh LFS
// token of that user: Basic base64(username:token), valid for 2 hours
// (Gitlab::LfsToken DEFAULT_EXPIRE_TIME), whatever the presented token's
// scopes or remaining life. It is tied to the user and the project, not to
// the token that asked for it: revoking or rotating that token does not end
// it (a revoked access token's bot user stays), and it carries the
// abilities read_project, download_code and push_code. For a deploy token,
// GitLab echoes the request's own Authorization header, so the action dies
// with the deploy token.
//
// Objects are kept by oid for the whole instance and linked to the projects
// they were uploaded to; the batch API answers only objects linked to the
// project, and a download serves any stored oid (LfsObject.find_by_oid), as
// GitLab does. Not modelled: lock creation, listing and unlocking (501),
// the legacy (non-batch) API, deploy-key LFS tokens (SSH), CI job tokens,
// repository size limits, object storage with direct download links, and
// the push check that refuses commits whose LFS objects were not uploaded.

const (
	lfsContentType      = "application/vnd.git-lfs+json; charset=utf-8"
	lfsTokenTTL         = 2 * time.Hour
	lfsMaxObject        = 64 << 20 // the stand-in keeps objects in memory
	lfsMaxBatchBody     = 10 << 20
	lfsMissingMessage   = "Object does not exist on the server or you don't have permissions to access it"
	lfsForbiddenMessage = "Access forbidden. Check your access level."
)

var lfsOID = regexp.MustCompile(`^[a-f0-9]{64}$`)

// lfsState holds LFS objects and the LFS token secret.
type lfsState struct {
	mu      sync.Mutex
	objects map[string][]byte          // oid -> content
	links   map[int64]map[string]int64 // project id -> oid -> size
	secret  []byte                     // HMAC key of LFS tokens
}

func (s *Server) lfsState() *lfsState {
	s.lfsOnce.Do(func() {
		key := make([]byte, 32)
		if _, err := rand.Read(key); err != nil {
			panic(err)
		}
		s.lfs = &lfsState{objects: map[string][]byte{}, links: map[int64]map[string]int64{}, secret: key}
	})
	return s.lfs
}

// LFSObjects returns the LFS objects linked to a project: oid -> size.
func (s *Server) LFSObjects(projectPath string) map[string]int64 {
	p, ok := s.ProjectByPath(projectPath)
	out := map[string]int64{}
	if !ok {
		return out
	}
	l := s.lfsState()
	l.mu.Lock()
	defer l.mu.Unlock()
	for oid, size := range l.links[p.ID] {
		out[oid] = size
	}
	return out
}

// lfsRoute is one request on an LFS route.
type lfsRoute struct {
	repoPath string // the project path as requested, without .git
	kind     string // "batch", "download", "upload", "verify"
	oid      string
	size     int64
}

// parseLFSRoute recognises the LFS routes; ok is false for any other path.
func parseLFSRoute(r *http.Request) (lfsRoute, bool) {
	p := strings.TrimPrefix(r.URL.Path, "/")
	i := strings.Index(p, ".git/")
	if i <= 0 {
		return lfsRoute{}, false
	}
	rt := lfsRoute{repoPath: p[:i]}
	rest := p[i+len(".git/"):]
	switch {
	case rest == "info/lfs/objects/batch" && r.Method == http.MethodPost:
		rt.kind = "batch"
	case rest == "info/lfs/locks/verify" && r.Method == http.MethodPost:
		rt.kind = "verify"
	case strings.HasPrefix(rest, "gitlab-lfs/objects/"):
		parts := strings.Split(strings.TrimPrefix(rest, "gitlab-lfs/objects/"), "/")
		if !lfsOID.MatchString(parts[0]) {
			return lfsRoute{}, false
		}
		rt.oid = parts[0]
		switch {
		case len(parts) == 1 && (r.Method == http.MethodGet || r.Method == http.MethodHead):
			rt.kind = "download"
		case len(parts) == 2 && r.Method == http.MethodPut:
			n, err := strconv.ParseInt(parts[1], 10, 64)
			if err != nil || n < 0 || strings.TrimLeft(parts[1], "0123456789") != "" {
				return lfsRoute{}, false
			}
			rt.kind, rt.size = "upload", n
		default:
			return lfsRoute{}, false
		}
	default:
		return lfsRoute{}, false
	}
	return rt, true
}

// lfsBatchRequest is the part of a batch request GitLab reads.
type lfsBatchRequest struct {
	Operation string           `json:"operation"`
	Objects   []map[string]any `json:"objects"`
}

// serveLFS answers the LFS routes; it reports false for any other path.
func (s *Server) serveLFS(w http.ResponseWriter, r *http.Request) bool {
	rt, ok := parseLFSRoute(r)
	if !ok {
		return false
	}
	var batch lfsBatchRequest
	if rt.kind == "batch" {
		// Rails parses the body as parameters only for a JSON content type.
		mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
		body, err := io.ReadAll(io.LimitReader(r.Body, lfsMaxBatchBody+1))
		if err != nil || len(body) > lfsMaxBatchBody {
			writeLFSMessage(w, s, http.StatusRequestEntityTooLarge, "Request body too large")
			return true
		}
		if mt == "application/vnd.git-lfs+json" || mt == "application/json" {
			if err := json.Unmarshal(body, &batch); err != nil {
				writeLFSMessage(w, s, http.StatusBadRequest, "Invalid JSON body")
				return true
			}
		}
	}
	download := rt.kind == "download" || (rt.kind == "batch" && batch.Operation == "download")
	upload := rt.kind == "upload" || rt.kind == "verify" || (rt.kind == "batch" && batch.Operation == "upload")

	s.mu.Lock()
	var project *Project
	if gitlabpath.ValidProject(rt.repoPath) {
		project = s.lookupProjectLocked(rt.repoPath)
	}
	login, password, hasAuth := r.BasicAuth()
	var actor *gitActor
	switch {
	case hasAuth:
		actor = s.lfsTokenActorLocked(login, password, project)
		if actor == nil {
			actor = s.findForGitClientLocked(login, password, project)
		}
	case download && project != nil && project.Visibility == "public":
		actor = &gitActor{abilities: map[string]bool{abDownloadCode: true}} // anonymous
	}
	if actor == nil {
		s.mu.Unlock()
		s.basicDenied(w)
		return true
	}
	if project == nil {
		s.mu.Unlock()
		writeLFSMessage(w, s, http.StatusNotFound, "Not found.")
		return true
	}
	canDownload := s.lfsDownloadAccessLocked(actor, project)
	allowed := (download && canDownload) || (upload && s.lfsUploadAccessLocked(actor, project))
	var authorization string
	if allowed && rt.kind == "batch" {
		authorization = r.Header.Get("Authorization")
		if actor.user != nil {
			tok, err := s.newLFSToken(actor.user, project)
			if err != nil {
				s.mu.Unlock()
				writeLFSMessage(w, s, http.StatusInternalServerError, err.Error())
				return true
			}
			authorization = "Basic " + base64.StdEncoding.EncodeToString([]byte(actor.user.Username+":"+tok))
		}
	}
	public := project.Visibility == "public"
	s.mu.Unlock()

	switch {
	case !allowed && canDownload:
		writeLFSMessage(w, s, http.StatusForbidden, lfsForbiddenMessage)
	case !allowed:
		writeLFSMessage(w, s, http.StatusNotFound, "Not found.")
	case rt.kind == "batch":
		s.lfsBatch(w, project, batch, download, authorization, public)
	case rt.kind == "download":
		s.lfsDownload(w, r, rt.oid)
	case rt.kind == "upload":
		s.lfsUpload(w, r, project, rt)
	case rt.kind == "verify":
		w.Header().Set("Content-Type", lfsContentType)
		w.WriteHeader(http.StatusOK)
		_, _ = io.WriteString(w, `{"ours":[],"theirs":[]}`)
	}
	return true
}

// lfsDownloadAccessLocked is LfsRequest#lfs_download_access?.
func (s *Server) lfsDownloadAccessLocked(a *gitActor, p *Project) bool {
	if a.deploy != nil {
		return s.deployHasAccessLocked(a.deploy, p) && slices.Contains(a.deploy.Scopes, "read_repository")
	}
	return a.abilities[abDownloadCode] && s.actorCanLocked(a, p, abDownloadCode)
}

// lfsUploadAccessLocked is LfsRequest#lfs_upload_access?: the push_code
// ability and a user who may push. Deploy tokens have no push_code.
func (s *Server) lfsUploadAccessLocked(a *gitActor, p *Project) bool {
	return a.user != nil && a.abilities[abPushCode] && s.actorCanLocked(a, p, abPushCode)
}

func (s *Server) lfsBatch(w http.ResponseWriter, p *Project, req lfsBatchRequest, download bool, authorization string, public bool) {
	if len(req.Objects) == 0 {
		writeLFSMessage(w, s, http.StatusNotFound, "Not found.")
		return
	}
	l := s.lfsState()
	l.mu.Lock()
	linked := l.links[p.ID]
	l.mu.Unlock()
	base := s.url + "/" + p.PathWithNamespace + ".git/gitlab-lfs/objects/"
	out := make([]map[string]any, 0, len(req.Objects))
	for _, obj := range req.Objects {
		o := map[string]any{}
		for k, v := range obj {
			o[k] = v
		}
		oid, _ := obj["oid"].(string)
		_, have := linked[oid]
		switch {
		case download && have:
			header := map[string]string{}
			if authorization != "" {
				header["Authorization"] = authorization
			}
			o["actions"] = map[string]any{"download": map[string]any{"href": base + oid, "header": header}}
			if public {
				o["authenticated"] = true
			}
		case download:
			o["error"] = map[string]any{"code": 404, "message": lfsMissingMessage}
		case have:
			// Already uploaded: no action.
		default:
			o["actions"] = map[string]any{"upload": map[string]any{
				"href": base + oid + "/" + lfsSize(obj["size"]),
				"header": map[string]string{
					"Authorization":     authorization,
					"Content-Type":      "application/octet-stream",
					"Transfer-Encoding": "chunked",
				},
			}}
		}
		out = append(out, o)
	}
	w.Header().Set("Content-Type", lfsContentType)
	w.WriteHeader(http.StatusOK)
	_ = json.NewEncoder(w).Encode(map[string]any{"objects": out})
}

// lfsSize prints a request object's size as Ruby interpolates it.
func lfsSize(v any) string {
	switch x := v.(type) {
	case float64:
		return strconv.FormatFloat(x, 'f', -1, 64)
	case string:
		return x
	case nil:
		return ""
	}
	return fmt.Sprint(v)
}

func (s *Server) lfsDownload(w http.ResponseWriter, r *http.Request, oid string) {
	l := s.lfsState()
	l.mu.Lock()
	content, ok := l.objects[oid]
	l.mu.Unlock()
	if !ok {
		writeLFSMessage(w, s, http.StatusNotFound, "Not found.")
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.Itoa(len(content)))
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		_, _ = w.Write(content)
	}
}

// lfsUpload is Workhorse's upload followed by upload_finalize: the body must
// hash to the oid and have the size of the URL.
func (s *Server) lfsUpload(w http.ResponseWriter, r *http.Request, p *Project, rt lfsRoute) {
	if rt.size > lfsMaxObject {
		writeLFSMessage(w, s, http.StatusRequestEntityTooLarge, fmt.Sprintf("the stand-in keeps LFS objects of at most %d bytes", lfsMaxObject))
		return
	}
	content, err := io.ReadAll(io.LimitReader(r.Body, rt.size+1))
	if err != nil {
		writeLFSMessage(w, s, http.StatusBadRequest, "could not read the upload")
		return
	}
	sum := sha256.Sum256(content)
	if int64(len(content)) != rt.size || hex.EncodeToString(sum[:]) != rt.oid {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(http.StatusBadRequest)
		_, _ = io.WriteString(w, "SHA256 or size mismatch")
		return
	}
	l := s.lfsState()
	l.mu.Lock()
	if _, ok := l.objects[rt.oid]; !ok {
		l.objects[rt.oid] = content
	}
	if l.links[p.ID] == nil {
		l.links[p.ID] = map[string]int64{}
	}
	l.links[p.ID][rt.oid] = rt.size
	l.mu.Unlock()
	w.Header().Set("Content-Type", lfsContentType)
	w.WriteHeader(http.StatusOK)
}

func writeLFSMessage(w http.ResponseWriter, s *Server, status int, msg string) {
	w.Header().Set("Content-Type", lfsContentType)
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"message": msg, "documentation_url": s.url + "/help"})
}

// lfsClaims are Gitlab::LfsToken's HMAC token: JSONWebToken::HMACToken with
// data.actor and data.container_gid.
type lfsClaims struct {
	Data struct {
		Actor        string `json:"actor"`
		ContainerGID string `json:"container_gid,omitempty"`
	} `json:"data"`
	jwt.RegisteredClaims
}

func projectGID(p *Project) string { return fmt.Sprintf("gid://gitlab/Project/%d", p.ID) }

// newLFSToken is Gitlab::LfsToken.new(user, project).token.
func (s *Server) newLFSToken(u *User, p *Project) (string, error) {
	now := s.now()
	c := lfsClaims{RegisteredClaims: jwt.RegisteredClaims{
		ID:        randomHex(16),
		IssuedAt:  jwt.NewNumericDate(now),
		NotBefore: jwt.NewNumericDate(now.Add(-5 * time.Second)),
		ExpiresAt: jwt.NewNumericDate(now.Add(lfsTokenTTL)),
	}}
	c.Data.Actor = u.Username
	c.Data.ContainerGID = projectGID(p)
	return jwt.NewWithClaims(jwt.SigningMethodHS256, c).SignedString(s.lfsState().secret)
}

// lfsTokenActorLocked is find_for_git_client's lfs_token_check: the login
// names a user and the password is an LFS token of that user (for this
// project, when it names one) that has not expired. Its abilities are
// read_write_project_authentication_abilities.
func (s *Server) lfsTokenActorLocked(login, password string, p *Project) *gitActor {
	u := s.usersByName[login]
	if u == nil || password == "" {
		return nil
	}
	var c lfsClaims
	_, err := jwt.ParseWithClaims(password, &c, func(t *jwt.Token) (any, error) { return s.lfsState().secret, nil },
		jwt.WithValidMethods([]string{"HS256"}), jwt.WithTimeFunc(s.now), jwt.WithExpirationRequired())
	if err != nil || c.Data.Actor != u.Username {
		return nil
	}
	if c.Data.ContainerGID != "" && p != nil && c.Data.ContainerGID != projectGID(p) {
		return nil
	}
	return &gitActor{user: u, login: login, abilities: map[string]bool{abReadProject: true, abDownloadCode: true, abPushCode: true}}
}
