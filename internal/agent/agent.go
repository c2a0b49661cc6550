// Package agent is the per-user process that holds a person's GitLab OAuth grants so that no
// refresh token lands in a plain file or in git's config: Server answers on a Unix socket
// (in a 0700 directory under $XDG_RUNTIME_DIR) to the same user only, checked with
// SO_PEERCRED; it hands out access tokens, refreshing them at half-life, one refresh at a time
// per host however many git processes ask at once (GitLab's refresh tokens work once). Client
// is its counterpart in the credential helper; Start launches an agent on first use, as git's
// credential-cache does.
package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"time"

	"gltoken.dev/gltoken/internal/gitlaboauth"
)

// Oauth is what the agent needs of GitLab: refreshing and revoking a grant.
type Oauth interface {
	Refresh(ctx context.Context, g gitlaboauth.Grant) (gitlaboauth.Grant, error)
	Revoke(ctx context.Context, g gitlaboauth.Grant) error
}

// Keeper is where remembered grants survive the agent (a reboot); nil keeps them in memory only.
type Keeper interface {
	Load() ([]gitlaboauth.Grant, error)
	Save([]gitlaboauth.Grant) error
	Where() string
}

// Options configures a Server.
type Options struct {
	// Oauth builds the GitLab OAuth client for a grant's host and client id.
	Oauth func(host, clientID string) Oauth
	// Keeper keeps remembered grants (opt-in); nil: memory only.
	Keeper Keeper
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Margin: an access token with less life left is never handed out (default 60s).
	Margin time.Duration
	// ExitWhenEmpty stops the server when it holds no grant (an agent started on demand).
	ExitWhenEmpty bool
	// Log receives the agent's events (never a secret). Default: discard.
	Log *slog.Logger
}

type entry struct {
	mu       sync.Mutex // held across a refresh: the single flight
	grant    gitlaboauth.Grant
	remember bool
	stale    bool // git rejected the access token: refresh before handing it out again
}

// Server holds the grants.
type Server struct {
	opts Options
	uid  int // the only peer uid served

	mu      sync.Mutex
	entries map[string]*entry
	kept    map[string]gitlaboauth.Grant // the remembered grants as last written, by host
	srv     *http.Server
	saveMu  sync.Mutex // serialises writes to the keeper
	once    sync.Once
}

// NewServer returns a Server for the calling user, with the remembered grants loaded.
func NewServer(opts Options) (*Server, error) {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Margin == 0 {
		opts.Margin = 60 * time.Second
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	s := &Server{opts: opts, uid: os.Getuid(), entries: map[string]*entry{}, kept: map[string]gitlaboauth.Grant{}}
	if opts.Keeper != nil {
		grants, err := opts.Keeper.Load()
		if err != nil {
			return nil, err
		}
		for _, g := range grants {
			s.entries[g.Host] = &entry{grant: g, remember: true}
			s.kept[g.Host] = g
		}
	}
	return s, nil
}

// Serve answers on l until Shutdown (or, with ExitWhenEmpty, until no grant is left). Peers of
// another uid are refused at accept.
func (s *Server) Serve(l net.Listener) error {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/grant", s.handlePut)
	mux.HandleFunc("POST /v1/token", s.handleToken)
	mux.HandleFunc("POST /v1/reject", s.handleReject)
	mux.HandleFunc("POST /v1/logout", s.handleLogout)
	mux.HandleFunc("GET /v1/status", s.handleStatus)
	s.mu.Lock()
	s.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	srv := s.srv
	s.mu.Unlock()
	err := srv.Serve(&peerListener{Listener: l, uid: s.uid, log: s.opts.Log})
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Shutdown stops serving.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	srv := s.srv
	s.mu.Unlock()
	if srv == nil {
		return nil
	}
	return srv.Shutdown(ctx)
}

func (s *Server) exitIfEmpty() {
	if !s.opts.ExitWhenEmpty {
		return
	}
	s.mu.Lock()
	empty := len(s.entries) == 0
	s.mu.Unlock()
	if empty {
		s.once.Do(func() {
			go func() {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				_ = s.Shutdown(ctx)
			}()
		})
	}
}

// peerListener refuses connections from any uid but the agent's own (SO_PEERCRED).
type peerListener struct {
	net.Listener
	uid int
	log *slog.Logger
}

func (l *peerListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		uid, err := PeerUID(c)
		if err == nil && uid == l.uid {
			return c, nil
		}
		l.log.Warn("refused a connection", "peer_uid", uid, "err", err)
		_ = c.Close()
	}
}

// PeerUID is the uid of the process at the other end of a Unix socket connection.
func PeerUID(c net.Conn) (int, error) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return -1, errors.New("not a Unix socket connection")
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return -1, err
	}
	var cred *syscall.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	}); err != nil {
		return -1, err
	}
	if cerr != nil {
		return -1, cerr
	}
	return int(cred.Uid), nil
}

// Wire types of the agent's API.
type (
	hostRequest struct {
		Host        string `json:"host"`
		AccessToken string `json:"access_token,omitempty"` // reject: the token git refused
	}
	putRequest struct {
		Grant    gitlaboauth.Grant `json:"grant"`
		Remember bool              `json:"remember"`
	}
	// TokenAnswer is an access token for git.
	TokenAnswer struct {
		AccessToken string    `json:"access_token"`
		ExpiresAt   time.Time `json:"expires_at"`
	}
	// HostStatus describes one grant, never a secret.
	HostStatus struct {
		Host       string    `json:"host"`
		Scopes     []string  `json:"scopes"`
		ObtainedAt time.Time `json:"obtained_at"`
		ExpiresAt  time.Time `json:"expires_at"`
		Kept       string    `json:"kept"`
	}
	// StatusAnswer is the agent's state.
	StatusAnswer struct {
		PID   int          `json:"pid"`
		Hosts []HostStatus `json:"hosts"`
	}
	errorAnswer struct {
		Error       string `json:"error"`
		Description string `json:"error_description"`
	}
)

// Error codes of the agent's API.
const (
	CodeNotLoggedIn   = "not_logged_in"
	CodeLoginNeeded   = "login_needed" // the refresh was refused: the grant is gone
	CodeUnavailable   = "unavailable"  // GitLab could not be reached and the token is too old
	CodeInvalidInput  = "invalid_request"
	CodeRevokeFailure = "revoke_failed"
)

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, code, desc string) {
	writeJSON(w, status, errorAnswer{Error: code, Description: desc})
}

func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<16)).Decode(v); err != nil {
		writeError(w, http.StatusBadRequest, CodeInvalidInput, "the request is not the agent's JSON")
		return false
	}
	return true
}

func (s *Server) handlePut(w http.ResponseWriter, r *http.Request) {
	var req putRequest
	if !decode(w, r, &req) {
		return
	}
	g := req.Grant
	if g.Host == "" || g.AccessToken == "" || g.RefreshToken == "" || g.ClientID == "" {
		writeError(w, http.StatusBadRequest, CodeInvalidInput, "a grant needs host, client_id, access_token and refresh_token")
		return
	}
	s.mu.Lock()
	e := s.entries[g.Host]
	if e == nil {
		e = &entry{}
		s.entries[g.Host] = e
	}
	s.mu.Unlock()
	e.mu.Lock()
	old := e.grant
	e.grant, e.remember, e.stale = g, req.Remember, false
	e.mu.Unlock()
	s.keep(g, req.Remember)
	if old.RefreshToken != "" && old.RefreshToken != g.RefreshToken {
		// A new login replaces the old grant: end the old one at GitLab.
		if err := s.opts.Oauth(old.Host, old.ClientID).Revoke(r.Context(), old); err != nil {
			s.opts.Log.Warn("could not revoke the replaced grant", "host", old.Host, "err", err)
		}
	}
	s.opts.Log.Info("grant stored", "host", g.Host, "scopes", g.Scopes, "remember", req.Remember)
	writeJSON(w, http.StatusOK, s.status())
}

func (s *Server) entry(host string) *entry {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.entries[host]
}

func (s *Server) forget(host string, e *entry) {
	s.mu.Lock()
	if s.entries[host] == e {
		delete(s.entries, host)
	}
	s.mu.Unlock()
	s.keep(gitlaboauth.Grant{Host: host}, false)
}

func (s *Server) handleToken(w http.ResponseWriter, r *http.Request) {
	var req hostRequest
	if !decode(w, r, &req) {
		return
	}
	e := s.entry(req.Host)
	if e == nil {
		writeError(w, http.StatusNotFound, CodeNotLoggedIn, "not logged in to "+req.Host)
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if s.entry(req.Host) != e {
		writeError(w, http.StatusNotFound, CodeNotLoggedIn, "not logged in to "+req.Host)
		return
	}
	g := e.grant
	now := s.opts.Now()
	halfLife := g.ObtainedAt.Add(g.ExpiresAt.Sub(g.ObtainedAt) / 2)
	if e.stale || !now.Before(halfLife) {
		ng, err := s.opts.Oauth(g.Host, g.ClientID).Refresh(r.Context(), g)
		switch {
		case errors.Is(err, gitlaboauth.ErrLoginNeeded):
			s.opts.Log.Warn("refresh refused; grant dropped", "host", g.Host, "err", err)
			s.forget(req.Host, e)
			writeError(w, http.StatusUnauthorized, CodeLoginNeeded, err.Error())
			defer s.exitIfEmpty()
			return
		case err != nil:
			s.opts.Log.Warn("refresh failed", "host", g.Host, "err", err)
			if e.stale || g.ExpiresAt.Sub(now) < s.opts.Margin {
				writeError(w, http.StatusServiceUnavailable, CodeUnavailable, err.Error())
				return
			}
			// Still good for a while: serve it and try again on the next ask.
		default:
			e.grant, e.stale, g = ng, false, ng
			s.opts.Log.Info("refreshed", "host", g.Host, "expires_at", g.ExpiresAt)
			if e.remember {
				s.keep(ng, true)
			}
		}
	}
	writeJSON(w, http.StatusOK, TokenAnswer{AccessToken: g.AccessToken, ExpiresAt: g.ExpiresAt})
}

// handleReject marks the access token git was refused with as stale: the next ask refreshes.
func (s *Server) handleReject(w http.ResponseWriter, r *http.Request) {
	var req hostRequest
	if !decode(w, r, &req) {
		return
	}
	if e := s.entry(req.Host); e != nil {
		e.mu.Lock()
		if e.grant.AccessToken == req.AccessToken {
			e.stale = true
		}
		e.mu.Unlock()
	}
	writeJSON(w, http.StatusOK, map[string]any{})
}

func (s *Server) handleLogout(w http.ResponseWriter, r *http.Request) {
	var req hostRequest
	if !decode(w, r, &req) {
		return
	}
	e := s.entry(req.Host)
	if e == nil {
		writeError(w, http.StatusNotFound, CodeNotLoggedIn, "not logged in to "+req.Host)
		return
	}
	e.mu.Lock()
	g := e.grant
	err := s.opts.Oauth(g.Host, g.ClientID).Revoke(r.Context(), g)
	// Forget it either way: a grant the person wants gone is not kept for a retry.
	s.forget(req.Host, e)
	e.mu.Unlock()
	defer s.exitIfEmpty()
	if err != nil {
		s.opts.Log.Warn("revoke failed", "host", g.Host, "err", err)
		writeError(w, http.StatusBadGateway, CodeRevokeFailure, err.Error())
		return
	}
	s.opts.Log.Info("logged out", "host", g.Host)
	writeJSON(w, http.StatusOK, map[string]any{})
}

func (s *Server) handleStatus(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, s.status())
}

func (s *Server) status() StatusAnswer {
	s.mu.Lock()
	hosts := make([]string, 0, len(s.entries))
	entries := map[string]*entry{}
	for h, e := range s.entries {
		hosts = append(hosts, h)
		entries[h] = e
	}
	s.mu.Unlock()
	slices.Sort(hosts)
	out := StatusAnswer{PID: os.Getpid(), Hosts: []HostStatus{}}
	for _, h := range hosts {
		e := entries[h]
		e.mu.Lock()
		kept := "in the agent's memory only (gone at logout, reboot or when the agent stops)"
		if e.remember && s.opts.Keeper != nil {
			kept = "in the agent's memory and in " + s.opts.Keeper.Where() + " (survives a reboot)"
		}
		out.Hosts = append(out.Hosts, HostStatus{Host: h, Scopes: e.grant.Scopes, ObtainedAt: e.grant.ObtainedAt, ExpiresAt: e.grant.ExpiresAt, Kept: kept})
		e.mu.Unlock()
	}
	return out
}

// keep records g as remembered (or not) and rewrites the keeper's file. It takes no
// entry's lock, so it may be called while one is held.
func (s *Server) keep(g gitlaboauth.Grant, remember bool) {
	if s.opts.Keeper == nil {
		return
	}
	s.saveMu.Lock()
	defer s.saveMu.Unlock()
	s.mu.Lock()
	_, had := s.kept[g.Host]
	if remember {
		s.kept[g.Host] = g
	} else {
		delete(s.kept, g.Host)
	}
	hosts := make([]string, 0, len(s.kept))
	for h := range s.kept {
		hosts = append(hosts, h)
	}
	slices.Sort(hosts)
	grants := make([]gitlaboauth.Grant, 0, len(hosts))
	for _, h := range hosts {
		grants = append(grants, s.kept[h])
	}
	s.mu.Unlock()
	if !remember && !had {
		return
	}
	if err := s.opts.Keeper.Save(grants); err != nil {
		s.opts.Log.Error("cannot keep the remembered grants", "where", s.opts.Keeper.Where(), "err", err)
	}
}

// FileKeeper keeps remembered grants in one JSON file, mode 0600 in a 0700 directory.
type FileKeeper struct{ Path string }

// Where names the file.
func (k FileKeeper) Where() string { return k.Path }

// Load reads the file; a missing file holds nothing.
func (k FileKeeper) Load() ([]gitlaboauth.Grant, error) {
	f, err := os.Open(k.Path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read the remembered grants: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("%s is readable by others (mode %v): refusing it; chmod 600 it or delete it", k.Path, fi.Mode().Perm())
	}
	var grants []gitlaboauth.Grant
	if err := json.NewDecoder(io.LimitReader(f, 1<<20)).Decode(&grants); err != nil {
		return nil, fmt.Errorf("%s is not gltoken's grants file: %v", k.Path, err)
	}
	return grants, nil
}

// Save replaces the file atomically; no grant left removes it.
func (k FileKeeper) Save(grants []gitlaboauth.Grant) error {
	if len(grants) == 0 {
		err := os.Remove(k.Path)
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return err
	}
	dir := filepath.Dir(k.Path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	b, err := json.Marshal(grants)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, ".grants-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), k.Path)
}
