package gitlab

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// miniGitLab is a small GitLab API double for the unit tests of this package:
// just the routes the adapter calls, GitLab's JSON shapes, offset pagination,
// and hooks to inject faults. The integration tests use internal/gitlabfake.
type miniGitLab struct {
	srv          *httptest.Server
	serviceToken string
	now          func() time.Time

	mu       sync.Mutex
	projects map[string]int64 // full path -> id
	groups   map[string]int64
	tokens   []*miniToken
	users    map[int64]string
	nextID   int64
	requests []string // "METHOD /escaped/path"
	perPage  int
	// fault, when set, runs before the real handler; it returns true when it
	// answered the request itself.
	fault func(w http.ResponseWriter, r *http.Request) bool
	// after, when set, runs after the real handler wrote its answer into a
	// recorder; it returns true when it replaced the answer (e.g. lost it).
	after func(w http.ResponseWriter, r *http.Request, rec *httptest.ResponseRecorder) bool
}

type miniToken struct {
	Kind        string // deploy_project deploy_group access_project access_group
	OwnerID     int64
	ID          int64
	Name        string
	Username    string
	Scopes      []string
	ExpiresAt   string // as received
	AccessLevel int
	UserID      int64
	Revoked     bool
	Secret      string
}

func newMiniGitLab(t testing.TB) *miniGitLab {
	t.Helper()
	m := &miniGitLab{
		serviceToken: "glpat-service-" + randHex(8),
		now:          time.Now,
		projects:     map[string]int64{},
		groups:       map[string]int64{},
		users:        map[int64]string{},
		nextID:       100,
		perPage:      20,
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/v4/projects/{id}", m.getOwner("project"))
	mux.HandleFunc("GET /api/v4/groups/{id}", m.getOwner("group"))
	mux.HandleFunc("POST /api/v4/projects/{id}/deploy_tokens", m.create("project", "deploy"))
	mux.HandleFunc("POST /api/v4/groups/{id}/deploy_tokens", m.create("group", "deploy"))
	mux.HandleFunc("POST /api/v4/projects/{id}/access_tokens", m.create("project", "access"))
	mux.HandleFunc("POST /api/v4/groups/{id}/access_tokens", m.create("group", "access"))
	mux.HandleFunc("GET /api/v4/projects/{id}/deploy_tokens", m.list("project", "deploy"))
	mux.HandleFunc("GET /api/v4/groups/{id}/deploy_tokens", m.list("group", "deploy"))
	mux.HandleFunc("GET /api/v4/projects/{id}/access_tokens", m.list("project", "access"))
	mux.HandleFunc("GET /api/v4/groups/{id}/access_tokens", m.list("group", "access"))
	mux.HandleFunc("GET /api/v4/projects/{id}/access_tokens/{tid}", m.getAccess("project"))
	mux.HandleFunc("GET /api/v4/groups/{id}/access_tokens/{tid}", m.getAccess("group"))
	mux.HandleFunc("DELETE /api/v4/projects/{id}/deploy_tokens/{tid}", m.delete("project", "deploy"))
	mux.HandleFunc("DELETE /api/v4/groups/{id}/deploy_tokens/{tid}", m.delete("group", "deploy"))
	mux.HandleFunc("DELETE /api/v4/projects/{id}/access_tokens/{tid}", m.delete("project", "access"))
	mux.HandleFunc("DELETE /api/v4/groups/{id}/access_tokens/{tid}", m.delete("group", "access"))
	mux.HandleFunc("GET /api/v4/users/{id}", m.getUser)
	mux.HandleFunc("GET /api/v4/personal_access_tokens/self", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, map[string]any{"id": 1, "name": "svc", "revoked": false, "active": true,
			"scopes": []string{"api"}, "user_id": 1, "expires_at": m.now().AddDate(0, 6, 0).Format(time.DateOnly)})
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 501, map[string]string{"message": "mini: route not implemented: " + r.Method + " " + r.URL.EscapedPath()})
	})
	m.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		m.mu.Lock()
		m.requests = append(m.requests, r.Method+" "+r.URL.EscapedPath())
		fault, after := m.fault, m.after
		m.mu.Unlock()
		if r.Header.Get("PRIVATE-TOKEN") != m.serviceToken {
			writeJSON(w, 401, map[string]string{"message": "401 Unauthorized"})
			return
		}
		if fault != nil && fault(w, r) {
			return
		}
		if after == nil {
			mux.ServeHTTP(w, r)
			return
		}
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, r)
		if after(w, r, rec) {
			return
		}
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.WriteHeader(rec.Code)
		_, _ = w.Write(rec.Body.Bytes())
	}))
	t.Cleanup(m.srv.Close)
	return m
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func (m *miniGitLab) addProject(path string) int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.nextID++
	m.projects[path] = m.nextID
	return m.nextID
}

func (m *miniGitLab) addGroup(path string) int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.nextID++
	m.groups[path] = m.nextID
	return m.nextID
}

func (m *miniGitLab) setFault(f func(w http.ResponseWriter, r *http.Request) bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.fault = f
}

func (m *miniGitLab) setAfter(f func(w http.ResponseWriter, r *http.Request, rec *httptest.ResponseRecorder) bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.after = f
}

// count counts requests whose "METHOD path" starts with prefix.
func (m *miniGitLab) count(prefix string) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for _, r := range m.requests {
		if strings.HasPrefix(r, prefix) {
			n++
		}
	}
	return n
}

func (m *miniGitLab) allTokens() []miniToken {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]miniToken, 0, len(m.tokens))
	for _, t := range m.tokens {
		out = append(out, *t)
	}
	return out
}

// addToken stores a token directly (for list and revoke tests).
func (m *miniGitLab) addToken(t miniToken) *miniToken {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.nextID++
	t.ID = m.nextID
	m.tokens = append(m.tokens, &t)
	return &t
}

// owner resolves {id} (decimal id or URL-encoded full path) under the lock.
func (m *miniGitLab) ownerLocked(kind, id string) (int64, bool) {
	table := m.projects
	if kind == "group" {
		table = m.groups
	}
	if n, err := strconv.ParseInt(id, 10, 64); err == nil {
		for _, v := range table {
			if v == n {
				return n, true
			}
		}
		return 0, false
	}
	v, ok := table[id]
	return v, ok
}

func notFound(w http.ResponseWriter, kind string) {
	writeJSON(w, 404, map[string]string{"message": "404 " + strings.ToUpper(kind[:1]) + kind[1:] + " Not Found"})
}

func (m *miniGitLab) getOwner(kind string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		m.mu.Lock()
		defer m.mu.Unlock()
		id, ok := m.ownerLocked(kind, r.PathValue("id"))
		if !ok {
			notFound(w, kind)
			return
		}
		writeJSON(w, 200, map[string]any{"id": id})
	}
}

func (m *miniGitLab) create(kind, tk string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			Name        string   `json:"name"`
			Scopes      []string `json:"scopes"`
			ExpiresAt   string   `json:"expires_at"`
			Username    string   `json:"username"`
			AccessLevel *int     `json:"access_level"`
		}
		if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
			writeJSON(w, 400, map[string]string{"error": "bad json"})
			return
		}
		m.mu.Lock()
		defer m.mu.Unlock()
		oid, ok := m.ownerLocked(kind, r.PathValue("id"))
		if !ok {
			notFound(w, kind)
			return
		}
		if body.Name == "" || len(body.Scopes) == 0 {
			writeJSON(w, 400, map[string]string{"error": "name is missing, scopes is missing"})
			return
		}
		m.nextID++
		t := &miniToken{Kind: tk + "_" + kind, OwnerID: oid, ID: m.nextID, Name: body.Name, Scopes: body.Scopes,
			ExpiresAt: body.ExpiresAt, Username: body.Username}
		if tk == "deploy" {
			t.Secret = "gldt-" + randHex(10)
			if t.Username == "" {
				t.Username = "gitlab+deploy-token-" + strconv.FormatInt(t.ID, 10)
			}
			m.tokens = append(m.tokens, t)
			writeJSON(w, 201, map[string]any{"id": t.ID, "name": t.Name, "username": t.Username,
				"expires_at": t.ExpiresAt, "revoked": false, "expired": false, "scopes": t.Scopes, "token": t.Secret})
			return
		}
		t.Secret = "glpat-" + randHex(10)
		t.AccessLevel = 40
		if body.AccessLevel != nil {
			t.AccessLevel = *body.AccessLevel
		}
		m.nextID++
		t.UserID = m.nextID
		m.users[t.UserID] = fmt.Sprintf("%s_%d_bot_%s", kind, oid, randHex(4))
		m.tokens = append(m.tokens, t)
		writeJSON(w, 201, accessJSON(t, true))
	}
}

func accessJSON(t *miniToken, withSecret bool) map[string]any {
	v := map[string]any{"id": t.ID, "name": t.Name, "revoked": t.Revoked, "active": !t.Revoked,
		"scopes": t.Scopes, "user_id": t.UserID, "expires_at": nullable(t.ExpiresAt), "access_level": t.AccessLevel,
		"created_at": "2026-01-01T00:00:00.000Z", "description": ""}
	if withSecret {
		v["token"] = t.Secret
	}
	return v
}

// nullable renders "" as JSON null, as GitLab renders a missing date.
func nullable(s string) any {
	if s == "" {
		return nil
	}
	return s
}

func (m *miniGitLab) list(kind, tk string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		m.mu.Lock()
		defer m.mu.Unlock()
		oid, ok := m.ownerLocked(kind, r.PathValue("id"))
		if !ok {
			notFound(w, kind)
			return
		}
		state := r.URL.Query().Get("state")
		var all []*miniToken
		for _, t := range m.tokens {
			if t.Kind != tk+"_"+kind || t.OwnerID != oid {
				continue
			}
			if state == "active" && t.Revoked || state == "inactive" && !t.Revoked {
				continue
			}
			all = append(all, t)
		}
		sort.Slice(all, func(i, j int) bool { return all[i].ID < all[j].ID })
		per := m.perPage
		if v, err := strconv.Atoi(r.URL.Query().Get("per_page")); err == nil && v > 0 && v <= 100 {
			per = v
		}
		page := 1
		if v, err := strconv.Atoi(r.URL.Query().Get("page")); err == nil && v > 0 {
			page = v
		}
		lo, hi := min((page-1)*per, len(all)), min(page*per, len(all))
		if hi < len(all) {
			w.Header().Set("X-Next-Page", strconv.Itoa(page+1))
		}
		w.Header().Set("X-Total", strconv.Itoa(len(all)))
		out := []map[string]any{}
		for _, t := range all[lo:hi] {
			if tk == "deploy" {
				out = append(out, map[string]any{"id": t.ID, "name": t.Name, "username": t.Username,
					"expires_at": nullable(t.ExpiresAt), "revoked": t.Revoked, "expired": false, "scopes": t.Scopes})
			} else {
				out = append(out, accessJSON(t, false))
			}
		}
		writeJSON(w, 200, out)
	}
}

func (m *miniGitLab) findLocked(kind, tk string, r *http.Request) (*miniToken, bool) {
	oid, ok := m.ownerLocked(kind, r.PathValue("id"))
	if !ok {
		return nil, false
	}
	tid, _ := strconv.ParseInt(r.PathValue("tid"), 10, 64)
	for _, t := range m.tokens {
		if t.Kind == tk+"_"+kind && t.OwnerID == oid && t.ID == tid {
			return t, true
		}
	}
	return nil, false
}

func (m *miniGitLab) getAccess(kind string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		m.mu.Lock()
		defer m.mu.Unlock()
		t, ok := m.findLocked(kind, "access", r)
		if !ok {
			writeJSON(w, 404, map[string]string{"message": "404 Not found"})
			return
		}
		writeJSON(w, 200, accessJSON(t, false))
	}
}

func (m *miniGitLab) delete(kind, tk string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		m.mu.Lock()
		defer m.mu.Unlock()
		t, ok := m.findLocked(kind, tk, r)
		if !ok {
			writeJSON(w, 404, map[string]string{"message": "404 Not found"})
			return
		}
		if tk == "deploy" {
			for i, x := range m.tokens {
				if x == t {
					m.tokens = append(m.tokens[:i], m.tokens[i+1:]...)
					break
				}
			}
		} else {
			t.Revoked = true
		}
		w.WriteHeader(204)
	}
}

func (m *miniGitLab) getUser(w http.ResponseWriter, r *http.Request) {
	m.mu.Lock()
	defer m.mu.Unlock()
	id, _ := strconv.ParseInt(r.PathValue("id"), 10, 64)
	name, ok := m.users[id]
	if !ok {
		writeJSON(w, 404, map[string]string{"message": "404 User Not Found"})
		return
	}
	writeJSON(w, 200, map[string]any{"id": id, "username": name, "name": "bot", "state": "active", "bot": true})
}
