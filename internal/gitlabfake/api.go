package gitlabfake

import (
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// ---- sources (projects and groups) ----

// optionalCaller authenticates if a credential is present; anonymous requests get a nil user.
func (s *Server) optionalCaller(w http.ResponseWriter, r *http.Request) (*apiCaller, bool) {
	if r.Header.Get("PRIVATE-TOKEN") == "" && r.Header.Get("Authorization") == "" &&
		r.URL.Query().Get("private_token") == "" && r.URL.Query().Get("access_token") == "" &&
		r.Header.Get("JOB-TOKEN") == "" {
		return &apiCaller{}, true
	}
	c := s.authenticateAPI(w, r, scopeAPI)
	return c, c != nil
}

// lookupProjectLocked finds a project as GitLab's API does
// (find_by_full_path(id, follow_redirects: true)): by id, by full path
// ignoring case, or by an old path a move or rename left as a redirect route.
func (s *Server) lookupProjectLocked(id string) *Project {
	if n, err := strconv.ParseInt(id, 10, 64); err == nil {
		return s.projects[n]
	}
	if p := s.projectsByPath[id]; p != nil {
		return p
	}
	for path, p := range s.projectsByPath {
		if strings.EqualFold(path, id) {
			return p
		}
	}
	return s.projects[s.projectRedirects[strings.ToLower(id)]]
}

// lookupGroupLocked finds a group by id or by full path ignoring case.
func (s *Server) lookupGroupLocked(id string) *Group {
	if n, err := strconv.ParseInt(id, 10, 64); err == nil {
		return s.groups[n]
	}
	if g := s.groupsByPath[id]; g != nil {
		return g
	}
	for path, g := range s.groupsByPath {
		if strings.EqualFold(path, id) {
			return g
		}
	}
	return nil
}

// source is a project or a group found for a caller.
type source struct {
	kind    string // "projects" or "groups"
	project *Project
	group   *Group
}

func (src source) singular() string {
	if src.kind == "projects" {
		return "project"
	}
	return "group"
}

func (src source) path() string {
	if src.project != nil {
		return src.project.PathWithNamespace
	}
	return src.group.FullPath
}

func (src source) id() int64 {
	if src.project != nil {
		return src.project.ID
	}
	return src.group.ID
}

func (src source) key() string {
	if src.project != nil {
		return projectKey(src.project.ID)
	}
	return groupKey(src.group.ID)
}

// findSourceLocked is find_source / user_project: 404 when missing or invisible to the caller.
func (s *Server) findSourceLocked(w http.ResponseWriter, kind, id string, u *User) (source, bool) {
	if kind == "projects" {
		p := s.lookupProjectLocked(id)
		if p == nil || !s.canReadProjectLocked(u, p) {
			writeMessage(w, http.StatusNotFound, "404 Project Not Found")
			return source{}, false
		}
		return source{kind: kind, project: p}, true
	}
	g := s.lookupGroupLocked(id)
	if g == nil || !s.canReadGroupLocked(u, g) {
		writeMessage(w, http.StatusNotFound, "404 Group Not Found")
		return source{}, false
	}
	return source{kind: kind, group: g}, true
}

// levelLocked is the caller's effective role on the source (admins count as owners).
func (s *Server) levelLocked(u *User, src source) int {
	if u == nil {
		return NoAccess
	}
	if src.project != nil {
		return s.effectiveProjectLevelLocked(u, src.project)
	}
	return s.effectiveGroupLevelLocked(u, src.group)
}

// memberLevelLocked is max_member_access_for_user (no admin bonus).
func (s *Server) memberLevelLocked(u *User, src source) int {
	if src.project != nil {
		return s.projectAccessLocked(u, src.project)
	}
	return s.groupAccessLocked(u, src.group)
}

func (s *Server) projectJSON(p *Project) map[string]any {
	g := s.groups[p.NamespaceID]
	return map[string]any{
		"id":                  p.ID,
		"description":         nil,
		"name":                p.Name,
		"name_with_namespace": strings.ReplaceAll(p.PathWithNamespace, "/", " / "),
		"path":                p.Path,
		"path_with_namespace": p.PathWithNamespace,
		"default_branch":      p.DefaultBranch,
		"visibility":          p.Visibility,
		"web_url":             s.url + "/" + p.PathWithNamespace,
		"http_url_to_repo":    s.url + "/" + p.PathWithNamespace + ".git",
		"ssh_url_to_repo":     "git@127.0.0.1:" + p.PathWithNamespace + ".git",
		"namespace": map[string]any{
			"id":        g.ID,
			"name":      g.Name,
			"path":      g.Name,
			"kind":      "group",
			"full_path": g.FullPath,
			"parent_id": nullID(g.ParentID),
			"web_url":   s.url + "/groups/" + g.FullPath,
		},
	}
}

func nullID(id int64) any {
	if id == 0 {
		return nil
	}
	return id
}

func (s *Server) groupJSON(g *Group) map[string]any {
	return map[string]any{
		"id":         g.ID,
		"name":       g.Name,
		"path":       g.Name,
		"full_name":  strings.ReplaceAll(g.FullPath, "/", " / "),
		"full_path":  g.FullPath,
		"parent_id":  nullID(g.ParentID),
		"visibility": "private",
		"web_url":    s.url + "/groups/" + g.FullPath,
	}
}

func (s *Server) handleGetProject(w http.ResponseWriter, r *http.Request, p params) {
	c, ok := s.optionalCaller(w, r)
	if !ok {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	src, ok := s.findSourceLocked(w, "projects", p["id"], c.user)
	if !ok {
		return
	}
	writeJSON(w, http.StatusOK, s.projectJSON(src.project))
}

func (s *Server) handleGetGroup(w http.ResponseWriter, r *http.Request, p params) {
	c, ok := s.optionalCaller(w, r)
	if !ok {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	src, ok := s.findSourceLocked(w, "groups", p["id"], c.user)
	if !ok {
		return
	}
	writeJSON(w, http.StatusOK, s.groupJSON(src.group))
}

// paginate applies page/per_page and sets GitLab's pagination headers.
func paginate[T any](w http.ResponseWriter, r *http.Request, items []T) []T {
	page, _ := strconv.Atoi(r.URL.Query().Get("page"))
	per, _ := strconv.Atoi(r.URL.Query().Get("per_page"))
	if page < 1 {
		page = 1
	}
	if per < 1 {
		per = 20
	}
	if per > 100 {
		per = 100
	}
	total := len(items)
	pages := (total + per - 1) / per
	if pages == 0 {
		pages = 1
	}
	h := w.Header()
	h.Set("X-Page", strconv.Itoa(page))
	h.Set("X-Per-Page", strconv.Itoa(per))
	h.Set("X-Total", strconv.Itoa(total))
	h.Set("X-Total-Pages", strconv.Itoa(pages))
	if page < pages {
		h.Set("X-Next-Page", strconv.Itoa(page+1))
	} else {
		h.Set("X-Next-Page", "")
	}
	if page > 1 {
		h.Set("X-Prev-Page", strconv.Itoa(page-1))
	} else {
		h.Set("X-Prev-Page", "")
	}
	start := (page - 1) * per
	if start >= total {
		return []T{}
	}
	end := min(start+per, total)
	return items[start:end]
}

// ---- deploy tokens (lib/api/deploy_tokens.rb) ----

func (s *Server) deployTokenJSON(t *token, secret string) map[string]any {
	m := map[string]any{
		"id":         t.ID,
		"name":       t.Name,
		"username":   t.Username,
		"expires_at": nil,
		"revoked":    t.Revoked,
		"expired":    s.deployExpiredFieldLocked(t),
		"scopes":     nonNil(t.Scopes),
	}
	if t.ExpiresAt != nil {
		m["expires_at"] = t.ExpiresAt.UTC().Format("2006-01-02T15:04:05.000Z")
	}
	if secret != "" {
		m["token"] = secret
	}
	return m
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// deployTokenAuth authenticates and checks read/create/destroy_deploy_token:
// project Maintainer+, group Owner. It answers and returns false on failure.
func (s *Server) deployTokenAccessLocked(w http.ResponseWriter, c *apiCaller, kind, id string) (source, bool) {
	src, ok := s.findSourceLocked(w, kind, id, c.user)
	if !ok {
		return source{}, false
	}
	need := Maintainer
	if kind == "groups" {
		need = Owner
	}
	if s.levelLocked(c.user, src) < need {
		writeMessage(w, http.StatusForbidden, "403 Forbidden")
		return source{}, false
	}
	return src, true
}

func deployKind(kind string) string {
	if kind == "projects" {
		return KindDeployProject
	}
	return KindDeployGroup
}

func (s *Server) handleListAllDeployTokens(w http.ResponseWriter, r *http.Request, _ params) {
	c := s.authenticateAPI(w, r, scopeAPI)
	if c == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !c.user.Admin {
		writeMessage(w, http.StatusForbidden, "403 Forbidden")
		return
	}
	active := r.URL.Query().Get("active") == "true"
	var out []map[string]any
	for _, t := range s.tokens {
		if isDeploy(t.Kind) && !t.Deleted && (!active || s.deployActiveLocked(t)) {
			out = append(out, s.deployTokenJSON(t, ""))
		}
	}
	writeJSON(w, http.StatusOK, nonNilMaps(paginate(w, r, out)))
}

func nonNilMaps(m []map[string]any) []map[string]any {
	if m == nil {
		return []map[string]any{}
	}
	return m
}

func (s *Server) handleListDeployTokens(w http.ResponseWriter, r *http.Request, p params, kind string) {
	c, ok := s.optionalCaller(w, r)
	if !ok {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	src, ok := s.deployTokenAccessLocked(w, c, kind, p["id"])
	if !ok {
		return
	}
	active := r.URL.Query().Get("active") == "true"
	var out []map[string]any
	for _, t := range s.tokens {
		if t.Kind == deployKind(kind) && t.OwnerPath == src.path() && !t.Deleted && (!active || s.deployActiveLocked(t)) {
			out = append(out, s.deployTokenJSON(t, ""))
		}
	}
	writeJSON(w, http.StatusOK, nonNilMaps(paginate(w, r, out)))
}

// deployUsernameRe is DeployToken's username format.
var deployUsernameRe = regexp.MustCompile(`^[a-zA-Z0-9.+_-]+$`)

// parseDateTime accepts what Grape's DateTime coercion accepts in practice: RFC 3339 (with or
// without fractional seconds), a date-time without zone (UTC) and a bare date (00:00 UTC).
func parseDateTime(v string) (time.Time, bool) {
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02T15:04:05", "2006-01-02 15:04:05", "2006-01-02T15:04:05Z0700", "2006-01-02"} {
		if t, err := time.Parse(layout, v); err == nil {
			return t.UTC(), true
		}
	}
	return time.Time{}, false
}

func parseDate(v string) (time.Time, bool) {
	t, err := time.Parse("2006-01-02", v)
	if err != nil {
		// Grape's Date coercion also takes a full timestamp and keeps the date.
		if tt, ok := parseDateTime(v); ok {
			return dateUTC(tt), true
		}
		return time.Time{}, false
	}
	return t, true
}

func (s *Server) handleCreateDeployToken(w http.ResponseWriter, r *http.Request, p params, kind string) {
	c, ok := s.optionalCaller(w, r)
	if !ok {
		return
	}
	in, name, scopes, ok := readNameAndScopes(w, r, deployTokenScopes)
	if !ok {
		return
	}
	var expiresAt *time.Time
	if v, ok := in.str("expires_at"); ok && v != "" {
		t, ok := parseDateTime(v)
		if !ok {
			writeGrapeError(w, "expires_at is invalid")
			return
		}
		t = t.Truncate(time.Microsecond) // a PostgreSQL timestamp
		expiresAt = &t
	}
	username, _ := in.str("username")
	hasUsername := username != "" // username.presence: blank means the default

	s.mu.Lock()
	defer s.mu.Unlock()
	src, ok := s.deployTokenAccessLocked(w, c, kind, p["id"])
	if !ok {
		return
	}
	// Model validation (app/models/deploy_token.rb), full messages joined as to_sentence.
	var errs []string
	if len(scopes) == 0 {
		errs = append(errs, "Scopes can't be blank")
	}
	if hasUsername {
		if len(username) > 255 {
			errs = append(errs, "Username is too long (maximum is 255 characters)")
		}
		if !deployUsernameRe.MatchString(username) {
			errs = append(errs, "Username can contain only letters, digits, '_', '-', '+', and '.'")
		}
	}
	if len(name) > 255 {
		errs = append(errs, "Name is too long (maximum is 255 characters)")
	}
	if len(errs) > 0 {
		writeMessage(w, http.StatusBadRequest, toSentence(errs))
		return
	}
	s.nextDeployID++
	id := s.nextDeployID
	if !hasUsername {
		username = fmt.Sprintf("gitlab+deploy-token-%d", id)
	}
	var granted []string
	for _, sc := range deployTokenScopes { // GitLab stores one boolean per scope: canonical order
		if slices.Contains(scopes, sc) {
			granted = append(granted, sc)
		}
	}
	secret := newSecret("gldt-")
	t := &token{TokenState: TokenState{
		Kind: deployKind(kind), ID: id, Name: name, OwnerPath: src.path(), Username: username,
		Scopes: granted, ExpiresAt: expiresAt, CreatedAt: s.now().UTC(),
	}}
	if c.user != nil {
		t.UserID = c.user.ID // creator, for the credential inventory only
	}
	s.storeTokenLocked(t, secret)
	writeJSON(w, http.StatusCreated, s.deployTokenJSON(t, secret))
}

func toSentence(parts []string) string {
	switch len(parts) {
	case 0:
		return ""
	case 1:
		return parts[0]
	case 2:
		return parts[0] + " and " + parts[1]
	}
	return strings.Join(parts[:len(parts)-1], ", ") + ", and " + parts[len(parts)-1]
}

func (s *Server) findDeployTokenLocked(src source, kind, idStr string) *token {
	id, err := strconv.ParseInt(idStr, 10, 64)
	if err != nil {
		return nil
	}
	for _, t := range s.tokens {
		if t.Kind == deployKind(kind) && t.ID == id && t.OwnerPath == src.path() && !t.Deleted {
			return t
		}
	}
	return nil
}

func (s *Server) handleGetDeployToken(w http.ResponseWriter, r *http.Request, p params, kind string) {
	c, ok := s.optionalCaller(w, r)
	if !ok {
		return
	}
	if _, err := strconv.ParseInt(p["token_id"], 10, 64); err != nil {
		writeGrapeError(w, "token_id is invalid")
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	src, ok := s.deployTokenAccessLocked(w, c, kind, p["id"])
	if !ok {
		return
	}
	t := s.findDeployTokenLocked(src, kind, p["token_id"])
	if t == nil {
		writeMessage(w, http.StatusNotFound, "404 Not found")
		return
	}
	writeJSON(w, http.StatusOK, s.deployTokenJSON(t, ""))
}

func (s *Server) handleDeleteDeployToken(w http.ResponseWriter, r *http.Request, p params, kind string) {
	c, ok := s.optionalCaller(w, r)
	if !ok {
		return
	}
	if _, err := strconv.ParseInt(p["token_id"], 10, 64); err != nil {
		writeGrapeError(w, "token_id is invalid")
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	src, ok := s.deployTokenAccessLocked(w, c, kind, p["id"])
	if !ok {
		return
	}
	t := s.findDeployTokenLocked(src, kind, p["token_id"])
	if t == nil {
		writeMessage(w, http.StatusNotFound, "404 Not found")
		return
	}
	t.Deleted = true // hard delete: the secret no longer authenticates, GET answers 404
	delete(s.tokenByHash, t.hash)
	w.WriteHeader(http.StatusNoContent)
}

// ---- project / group access tokens (lib/api/resource_access_tokens.rb) ----

func accessKind(kind string) string {
	if kind == "projects" {
		return KindProjectAccess
	}
	return KindGroupAccess
}

func (s *Server) accessTokenJSON(t *token, secret string) map[string]any {
	m := map[string]any{
		"id":            t.ID,
		"name":          t.Name,
		"revoked":       t.Revoked,
		"created_at":    t.CreatedAt.UTC().Format("2006-01-02T15:04:05.000Z"),
		"description":   t.Description,
		"scopes":        nonNil(t.Scopes),
		"user_id":       t.UserID,
		"last_used_at":  nil,
		"active":        s.patActiveLocked(t),
		"expires_at":    nil,
		"last_used_ips": []string{},
	}
	if t.LastUsedAt != nil {
		m["last_used_at"] = t.LastUsedAt.UTC().Format("2006-01-02T15:04:05.000Z")
	}
	if t.ExpiresAt != nil {
		m["expires_at"] = t.ExpiresAt.UTC().Format("2006-01-02")
	}
	if t.Kind != KindPersonal {
		m["access_level"] = t.AccessLevel
		m["resource_type"] = "group"
		if t.Kind == KindProjectAccess {
			m["resource_type"] = "project"
		}
		m["resource_id"] = s.resourceIDLocked(t)
	}
	if secret != "" {
		m["token"] = secret
	}
	return m
}

func (s *Server) resourceIDLocked(t *token) int64 {
	if t.Kind == KindProjectAccess {
		if p := s.projectsByPath[t.OwnerPath]; p != nil {
			return p.ID
		}
	}
	if g := s.groupsByPath[t.OwnerPath]; g != nil {
		return g.ID
	}
	return 0
}

// canManageAccessTokensLocked: project Maintainer+ or group Owner, humans only.
func (s *Server) canManageAccessTokensLocked(u *User, src source) bool {
	if u == nil || u.Bot {
		return false
	}
	need := Maintainer
	if src.kind == "groups" {
		need = Owner
	}
	return s.levelLocked(u, src) >= need
}

func (s *Server) findAccessTokenLocked(src source, idStr string) *token {
	id, err := strconv.ParseInt(idStr, 10, 64)
	if err != nil {
		return nil
	}
	for _, t := range s.tokens {
		if t.Kind == accessKind(src.kind) && t.ID == id && t.OwnerPath == src.path() {
			return t
		}
	}
	return nil
}

func (s *Server) handleListAccessTokens(w http.ResponseWriter, r *http.Request, p params, kind string) {
	c := s.authenticateAPI(w, r, scopeAPI)
	if c == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	src, ok := s.findSourceLocked(w, kind, p["id"], c.user)
	if !ok {
		return
	}
	if !s.canManageAccessTokensLocked(c.user, src) && !(c.user.Bot && s.levelLocked(c.user, src) >= Maintainer) {
		writeMessage(w, http.StatusUnauthorized, "401 Unauthorized")
		return
	}
	state := r.URL.Query().Get("state")
	search := r.URL.Query().Get("search")
	var out []map[string]any
	for _, t := range s.tokens {
		if t.Kind != accessKind(kind) || t.OwnerPath != src.path() {
			continue
		}
		active := s.patActiveLocked(t)
		if (state == "active" && !active) || (state == "inactive" && active) {
			continue
		}
		if search != "" && !strings.Contains(strings.ToLower(t.Name), strings.ToLower(search)) {
			continue
		}
		out = append(out, s.accessTokenJSON(t, ""))
	}
	writeJSON(w, http.StatusOK, nonNilMaps(paginate(w, r, out)))
}

func (s *Server) handleGetAccessToken(w http.ResponseWriter, r *http.Request, p params, kind string) {
	c := s.authenticateAPI(w, r, scopeAPI)
	if c == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	src, ok := s.findSourceLocked(w, kind, p["id"], c.user)
	if !ok {
		return
	}
	if !s.canManageAccessTokensLocked(c.user, src) && !(c.user.Bot && s.levelLocked(c.user, src) >= Maintainer) {
		writeMessage(w, http.StatusUnauthorized, "401 Unauthorized")
		return
	}
	t := s.findAccessTokenLocked(src, p["token_id"])
	if t == nil {
		writeMessage(w, http.StatusNotFound, "404 "+src.singular()+" Access Token Not Found")
		return
	}
	writeJSON(w, http.StatusOK, s.accessTokenJSON(t, ""))
}

func (s *Server) handleRevokeAccessToken(w http.ResponseWriter, r *http.Request, p params, kind string) {
	c := s.authenticateAPI(w, r, scopeAPI)
	if c == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	src, ok := s.findSourceLocked(w, kind, p["id"], c.user)
	if !ok {
		return
	}
	t := s.findAccessTokenLocked(src, p["token_id"])
	if t == nil {
		writeMessage(w, http.StatusNotFound, "404 "+src.singular()+" Access Token Not Found")
		return
	}
	if !s.canManageAccessTokensLocked(c.user, src) {
		bot := s.users[t.UserID]
		writeMessage(w, http.StatusBadRequest, fmt.Sprintf("%s cannot delete %s", c.user.Username, bot.Username))
		return
	}
	t.Revoked = true
	w.WriteHeader(http.StatusNoContent)
}

var validAccessLevels = []int{Guest, Planner, Reporter, Developer, Maintainer, Owner}

func (s *Server) handleCreateAccessToken(w http.ResponseWriter, r *http.Request, p params, kind string) {
	c := s.authenticateAPI(w, r, scopeAPI)
	if c == nil {
		return
	}
	in, name, scopes, ok := readNameAndScopes(w, r, resourceBotScopes)
	if !ok {
		return
	}
	level := Maintainer
	if v, ok := in.str("access_level"); ok {
		n, err := strconv.Atoi(v)
		if err != nil {
			writeGrapeError(w, "access_level is invalid")
			return
		}
		if !slices.Contains(validAccessLevels, n) {
			writeGrapeError(w, "access_level does not have a valid value")
			return
		}
		level = n
	}
	var expiresAt *time.Time
	if v, ok := in.str("expires_at"); ok && v != "" {
		t, ok := parseDate(v)
		if !ok {
			writeGrapeError(w, "expires_at is invalid")
			return
		}
		expiresAt = &t
	}
	description, _ := in.str("description")

	s.mu.Lock()
	defer s.mu.Unlock()
	src, ok := s.findSourceLocked(w, kind, p["id"], c.user)
	if !ok {
		return
	}
	if !s.canManageAccessTokensLocked(c.user, src) {
		writeMessage(w, http.StatusBadRequest, "User does not have permission to create "+src.singular()+" access token")
		return
	}
	if s.memberLevelLocked(c.user, src) < level {
		writeMessage(w, http.StatusBadRequest, "Access level of the token contains permissions not held by the creating user")
		return
	}
	today := dateUTC(s.now())
	if expiresAt == nil {
		// require_personal_access_token_expiry (on by default): the maximum lifetime from now.
		d := dateUTC(s.now().AddDate(0, 0, s.maxLifetimeDays()))
		expiresAt = &d
	}
	var errs []string
	if name == "" {
		errs = append(errs, "Name can't be blank")
	}
	if len(scopes) == 0 {
		errs = append(errs, "Scopes can't be blank")
	}
	if maxDate := today.AddDate(0, 0, s.maxLifetimeDays()); expiresAt.After(maxDate) {
		errs = append(errs, "Expires at must be before "+maxDate.Format("2006-01-02"))
	}
	if len(errs) > 0 {
		writeMessage(w, http.StatusBadRequest, toSentence(errs))
		return
	}
	// One bot user per token, member of the resource with the token's level.
	prefix := "project"
	if kind == "groups" {
		prefix = "group"
	}
	bot := s.addUserLocked(fmt.Sprintf("%s_%d_bot_%s", prefix, src.id(), randomHex(16)), true)
	s.stats.BotUsers++
	s.stats.AccessTokenCreates++
	s.setMemberLocked(src.key(), bot.ID, level)

	secret := newSecret("glpat-")
	s.nextPATID++
	t := &token{TokenState: TokenState{
		Kind: accessKind(kind), ID: s.nextPATID, Name: name, Description: description,
		OwnerPath: src.path(), Username: bot.Username, UserID: bot.ID, Scopes: slices.Clone(scopes),
		ExpiresAt: expiresAt, AccessLevel: level, CreatedAt: s.now().UTC(),
	}}
	s.storeTokenLocked(t, secret)
	writeJSON(w, http.StatusCreated, s.accessTokenJSON(t, secret))
}

// handleRotateAccessToken is POST /:kind/:id/access_tokens/:token_id/rotate
// (API::ResourceAccessTokens, api scope, by someone who may manage the
// resource's access tokens) and POST /:kind/:id/access_tokens/self/rotate
// (API::ResourceAccessTokens::SelfRotation, 16.10+): authenticated by the
// access token itself, which needs the api or self_rotate scope.
func (s *Server) handleRotateAccessToken(w http.ResponseWriter, r *http.Request, p params, kind string) {
	self := p["token_id"] == "self"
	rule := scopeAPI
	if self {
		rule = scopeRotate
	}
	c := s.authenticateAPI(w, r, rule)
	if c == nil {
		return
	}
	if self {
		s.handleSelfRotateAccessToken(w, r, p, kind, c)
		return
	}
	expiresAt, ok := readRotateExpiry(w, r)
	if !ok {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	src, ok := s.findSourceLocked(w, kind, p["id"], c.user)
	if !ok {
		return
	}
	var t *token
	switch {
	case s.canManageAccessTokensLocked(c.user, src):
		t = s.findAccessTokenLocked(src, p["token_id"])
	case c.user.Bot && c.tok.Kind == accessKind(kind) && c.tok.OwnerPath == src.path() &&
		strconv.FormatInt(c.tok.ID, 10) == p["token_id"]:
		t = c.tok
	}
	if t == nil {
		// Only admins learn that the token does not exist.
		if c.user.Admin {
			writeMessage(w, http.StatusNotFound, "404 Not Found")
		} else {
			writeMessage(w, http.StatusUnauthorized, "401 Unauthorized")
		}
		return
	}
	if t.Revoked {
		writeMessage(w, http.StatusBadRequest, "Token already revoked")
		return
	}
	if t != c.tok && s.memberLevelLocked(c.user, src) < t.AccessLevel && !c.user.Admin {
		writeMessage(w, http.StatusBadRequest, "Not eligible to rotate token with access level higher than the user")
		return
	}
	newSecret, nt, msg := s.rotateLocked(t, expiresAt)
	if nt == nil {
		writeMessage(w, http.StatusBadRequest, msg)
		return
	}
	writeJSON(w, http.StatusOK, s.accessTokenJSON(nt, newSecret))
}

// handleSelfRotateAccessToken: 405 unless the caller is a bot authenticated
// by an access token (not_allowed!), 404 when the resource is invisible to it,
// 401 when the token is not one of the resource's; then
// PersonalAccessTokens::RotateService on the caller's own token.
func (s *Server) handleSelfRotateAccessToken(w http.ResponseWriter, r *http.Request, p params, kind string, c *apiCaller) {
	if !c.user.Bot || c.tok.Kind == KindPersonal {
		writeMessage(w, http.StatusMethodNotAllowed, "405 Method Not Allowed")
		return
	}
	expiresAt, ok := readRotateExpiry(w, r)
	if !ok {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	src, ok := s.findSourceLocked(w, kind, p["id"], c.user)
	if !ok {
		return
	}
	if c.tok.Kind != accessKind(kind) || c.tok.OwnerPath != src.path() {
		writeMessage(w, http.StatusUnauthorized, "401 Unauthorized")
		return
	}
	newSecret, nt, msg := s.rotateLocked(c.tok, expiresAt)
	if nt == nil {
		writeMessage(w, http.StatusBadRequest, msg)
		return
	}
	writeJSON(w, http.StatusOK, s.accessTokenJSON(nt, newSecret))
}

// rotateLocked is PersonalAccessTokens::RotateService: revoke t, create its successor with the
// same name, scopes and user; expiry from the request or one week from now.
func (s *Server) rotateLocked(t *token, expiresAt *time.Time) (string, *token, string) {
	if expiresAt == nil {
		d := dateUTC(s.now().AddDate(0, 0, 7))
		expiresAt = &d
	}
	if maxDate := dateUTC(s.now()).AddDate(0, 0, s.maxLifetimeDays()); expiresAt.After(maxDate) {
		return "", nil, "Expires at must be before " + maxDate.Format("2006-01-02")
	}
	t.Revoked = true
	if t.Kind != KindPersonal {
		s.stats.AccessTokenRotates++
	}
	secret := newSecret("glpat-")
	s.nextPATID++
	nt := &token{TokenState: TokenState{
		Kind: t.Kind, ID: s.nextPATID, Name: t.Name, Description: t.Description, OwnerPath: t.OwnerPath,
		Username: t.Username, UserID: t.UserID, Scopes: slices.Clone(t.Scopes), ExpiresAt: expiresAt,
		AccessLevel: t.AccessLevel, PreviousID: t.ID, CreatedAt: s.now().UTC(),
	}}
	s.storeTokenLocked(nt, secret)
	return secret, nt, ""
}

// ---- personal access token self endpoints ----

func (s *Server) handlePATSelf(w http.ResponseWriter, r *http.Request, _ params) {
	c := s.authenticateAPI(w, r, scopeAnyScope)
	if c == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.accessTokenJSON(c.tok, "")
	if c.tok.Kind != KindPersonal {
		// Entities::PersonalAccessToken has no resource fields.
		delete(m, "access_level")
		delete(m, "resource_type")
		delete(m, "resource_id")
	}
	writeJSON(w, http.StatusOK, m)
}

func (s *Server) handlePATSelfRevoke(w http.ResponseWriter, r *http.Request, _ params) {
	c := s.authenticateAPI(w, r, scopeAnyScope)
	if c == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	c.tok.Revoked = true
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) handlePATSelfRotate(w http.ResponseWriter, r *http.Request, _ params) {
	c := s.authenticateAPI(w, r, scopeRotate)
	if c == nil {
		return
	}
	expiresAt, ok := readRotateExpiry(w, r)
	if !ok {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	secret, nt, msg := s.rotateLocked(c.tok, expiresAt)
	if nt == nil {
		writeMessage(w, http.StatusBadRequest, msg)
		return
	}
	m := s.accessTokenJSON(nt, secret)
	delete(m, "access_level")
	delete(m, "resource_type")
	delete(m, "resource_id")
	writeJSON(w, http.StatusOK, m)
}

// handleCurrentUser is GET /user (api, read_api or read_user scope).
func (s *Server) handleCurrentUser(w http.ResponseWriter, r *http.Request, _ params) {
	c := s.authenticateAPI(w, r, scopeReadUser)
	if c == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	u := c.user
	writeJSON(w, http.StatusOK, map[string]any{
		"id":         u.ID,
		"username":   u.Username,
		"name":       u.Username,
		"state":      "active",
		"email":      u.Email,
		"bot":        u.Bot,
		"is_admin":   u.Admin,
		"web_url":    s.url + "/" + u.Username,
		"locked":     false,
		"avatar_url": nil,
	})
}

// handleGetUser is GET /users/:id: any authenticated user may look a user up
// (bots included: that is how a project access token's bot username is
// found). GitLab answers the public fields of Entities::User.
func (s *Server) handleGetUser(w http.ResponseWriter, r *http.Request, p params) {
	c := s.authenticateAPI(w, r, scopeReadUser)
	if c == nil {
		return
	}
	id, err := strconv.ParseInt(p["id"], 10, 64)
	s.mu.Lock()
	defer s.mu.Unlock()
	u := s.users[id]
	if err != nil || u == nil {
		writeMessage(w, http.StatusNotFound, "404 User Not Found")
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"id":         u.ID,
		"username":   u.Username,
		"name":       u.Username,
		"state":      "active",
		"locked":     false,
		"avatar_url": nil,
		"web_url":    s.url + "/" + u.Username,
		"bot":        u.Bot,
		"created_at": time.Unix(0, 0).UTC().Format(time.RFC3339),
	})
}

// StandinVersion is what GET /api/v4/version reports.
const StandinVersion = "18.6.0-ee"

func (s *Server) handleVersion(w http.ResponseWriter, r *http.Request, _ params) {
	if c := s.authenticateAPI(w, r, scopeReadUser); c == nil {
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"version": StandinVersion, "revision": "standin", "kas": map[string]any{"enabled": false, "externalUrl": nil, "version": nil}, "enterprise": true})
}

// readNameAndScopes reads a token create's body and validates its two
// required parameters as Grape does (both missing ones named in one
// message, then the scope values against allowed). On failure it has
// answered 400 and reports false.
func readNameAndScopes(w http.ResponseWriter, r *http.Request, allowed []string) (in input, name string, scopes []string, ok bool) {
	in, err := readInput(r)
	if err != nil {
		writeGrapeError(w, err.Error())
		return in, "", nil, false
	}
	var missing []string
	name, hasName := in.str("name")
	if !hasName {
		missing = append(missing, "name is missing")
	}
	scopes, hasScopes, scopesOK := in.list("scopes")
	if !hasScopes {
		missing = append(missing, "scopes is missing")
	}
	if len(missing) > 0 {
		writeGrapeError(w, strings.Join(missing, ", "))
		return in, "", nil, false
	}
	if !scopesOK {
		writeGrapeError(w, "scopes is invalid")
		return in, "", nil, false
	}
	for _, sc := range scopes {
		if !slices.Contains(allowed, sc) {
			writeGrapeError(w, "scopes does not have a valid value")
			return in, "", nil, false
		}
	}
	return in, name, scopes, true
}

// readRotateExpiry reads a rotate's optional expires_at (a date); on a bad
// one it has answered 400 and reports false.
func readRotateExpiry(w http.ResponseWriter, r *http.Request) (*time.Time, bool) {
	in, err := readInput(r)
	if err != nil {
		writeGrapeError(w, err.Error())
		return nil, false
	}
	v, ok := in.str("expires_at")
	if !ok || v == "" {
		return nil, true
	}
	t, ok := parseDate(v)
	if !ok {
		writeGrapeError(w, "expires_at is invalid")
		return nil, false
	}
	return &t, true
}
