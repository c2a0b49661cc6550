package gitlabfake

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/big"
	"net/http"
	"net/url"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

type signingKey struct {
	kid string
	key *rsa.PrivateKey
}

// jwkThumbprint is the RFC 7638 SHA-256 thumbprint GitLab (json-jwt's to_jwk) uses as kid.
func jwkThumbprint(pub *rsa.PublicKey) string {
	e := base64.RawURLEncoding.EncodeToString(big.NewInt(int64(pub.E)).Bytes())
	n := base64.RawURLEncoding.EncodeToString(pub.N.Bytes())
	sum := sha256.Sum256([]byte(`{"e":"` + e + `","kty":"RSA","n":"` + n + `"}`))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

func (s *Server) addSigningKeyLocked() (string, error) {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return "", fmt.Errorf("gitlabfake: generate signing key: %w", err)
	}
	sk := &signingKey{kid: jwkThumbprint(&k.PublicKey), key: k}
	s.keys = append(s.keys, sk)
	return sk.kid, nil
}

// AddSigningKey publishes a new RSA key in the JWKS. It does not sign until UseSigningKey.
func (s *Server) AddSigningKey() (kid string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	kid, err := s.addSigningKeyLocked()
	if err != nil {
		panic(err)
	}
	return kid
}

// UseSigningKey makes the published key kid the CI signing key (GitLab's manual rotation).
func (s *Server) UseSigningKey(kid string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, k := range s.keys {
		if k.kid == kid {
			s.currentKID = kid
			return
		}
	}
	panic("gitlabfake: UseSigningKey: unknown kid " + kid)
}

// DropSigningKey removes kid from the JWKS at once. Dropping the current key leaves the server
// signing with a key nobody can verify, which is what happens on GitLab if an admin does that.
func (s *Server) DropSigningKey(kid string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, k := range s.keys {
		if k.kid == kid {
			s.keys = append(s.keys[:i], s.keys[i+1:]...)
			if kid == s.currentKID {
				// keep signing with the dropped key
				s.dropped = k
			}
			return
		}
	}
}

func (s *Server) currentKeyLocked() *signingKey {
	for _, k := range s.keys {
		if k.kid == s.currentKID {
			return k
		}
	}
	return s.dropped
}

// SigningKey returns the current CI signing key.
func (s *Server) SigningKey() (kid string, key *rsa.PrivateKey) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := s.currentKeyLocked()
	return k.kid, k.key
}

// oidcKey is GitLab's openid_connect_signing_key: published in the JWKS next to the CI key but
// never used for CI/CD ID tokens. It is made on first use (key generation is slow).
func (s *Server) oidcKey() (*signingKey, error) {
	s.oidcOnce.Do(func() {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			s.oidcErr = fmt.Errorf("gitlabfake: generate OIDC key: %w", err)
			return
		}
		s.oidcSigningKey = &signingKey{kid: jwkThumbprint(&k.PublicKey), key: k}
	})
	return s.oidcSigningKey, s.oidcErr
}

func (s *Server) handleJWKS(w http.ResponseWriter, _ *http.Request, _ params) {
	oidc, err := s.oidcKey()
	if err != nil {
		writeMessage(w, http.StatusInternalServerError, "500 Internal Server Error")
		return
	}
	s.mu.Lock()
	keys := make([]map[string]string, 0, len(s.keys)+1)
	// Like JwksController: the OIDC key first, then the CI key(s).
	for _, k := range append([]*signingKey{oidc}, s.keys...) {
		keys = append(keys, map[string]string{
			"kty": "RSA",
			"kid": k.kid,
			"e":   base64.RawURLEncoding.EncodeToString(big.NewInt(int64(k.key.PublicKey.E)).Bytes()),
			"n":   base64.RawURLEncoding.EncodeToString(k.key.PublicKey.N.Bytes()),
			"use": "sig",
			"alg": "RS256",
		})
	}
	s.mu.Unlock()
	w.Header().Set("Cache-Control", "max-age=86400, public, must-revalidate, no-transform")
	writeJSON(w, http.StatusOK, map[string]any{"keys": keys})
}

func (s *Server) handleDiscovery(w http.ResponseWriter, _ *http.Request, _ params) {
	u := s.url
	writeJSON(w, http.StatusOK, map[string]any{
		"issuer":                                u,
		"authorization_endpoint":                u + "/oauth/authorize",
		"token_endpoint":                        u + "/oauth/token",
		"revocation_endpoint":                   u + "/oauth/revoke",
		"introspection_endpoint":                u + "/oauth/introspect",
		"userinfo_endpoint":                     u + "/oauth/userinfo",
		"jwks_uri":                              u + "/oauth/discovery/keys",
		"device_authorization_endpoint":         u + "/oauth/authorize_device",
		"scopes_supported":                      []string{"api", "read_api", "read_user", "create_runner", "manage_runner", "k8s_proxy", "self_rotate", "read_repository", "write_repository", "read_registry", "write_registry", "read_virtual_registry", "write_virtual_registry", "read_observability", "write_observability", "ai_features", "sudo", "admin_mode", "read_service_ping", "openid", "profile", "email"},
		"response_types_supported":              []string{"code"},
		"response_modes_supported":              []string{"query", "fragment", "form_post"},
		"grant_types_supported":                 []string{"authorization_code", "password", "client_credentials", "device_code", "refresh_token"},
		"token_endpoint_auth_methods_supported": []string{"client_secret_basic", "client_secret_post"},
		"subject_types_supported":               []string{"public"},
		"id_token_signing_alg_values_supported": []string{"RS256"},
		"claim_types_supported":                 []string{"normal"},
		"claims_supported":                      []string{"iss", "sub", "aud", "exp", "iat", "sub_legacy", "name", "nickname", "preferred_username", "email", "email_verified", "website", "profile", "picture", "groups", "groups_direct", "https://gitlab.org/claims/groups/owner", "https://gitlab.org/claims/groups/maintainer", "https://gitlab.org/claims/groups/developer"},
		"code_challenge_methods_supported":      []string{"plain", "S256"},
	})
}

// Job describes a CI/CD job for IssueIDToken. Zero values get defaults.
type Job struct {
	Project *Project // the project the pipeline runs in; default: an unregistered "group/project" (id 1000)
	// SourceProject makes the job one of a merge-request pipeline from a fork:
	// the merge request comes from SourceProject (the fork) and the pipeline
	// runs in Project (the parent). As in Gitlab::Ci::Jwt, project_*,
	// namespace_*, user_access_level and sub then name the fork, job_project_*
	// and job_namespace_* the parent; ref and ref_path are the fork's source
	// branch; ci_config_ref_uri is the parent's CI file at that branch;
	// pipeline_source defaults to merge_request_event.
	SourceProject        *Project
	User                 *User  // the pipeline's user; default: a user "ci-user" (created on demand)
	Ref                  string // default "main"
	RefType              string // "branch" (default) or "tag"
	RefProtected         bool
	Environment          string // "" = the job has no environment (no environment claims)
	EnvironmentProtected bool
	DeploymentTier       string // default from the environment name, as GitLab guesses it
	EnvironmentAction    string // default "start"
	PipelineSource       string // default "push"
	RunnerID             int64  // default 1
	RunnerEnvironment    string // default "self-hosted"
	Audience             []string
	// Timeout is the job timeout: exp = iat + Timeout. Default 300 s (GitLab's fallback when a
	// job has no timeout; real jobs usually have the project's, 3600 s).
	Timeout    time.Duration
	IssuedAt   time.Time // default Now
	PipelineID int64     // default 1000 + n
	JobID      int64     // default 5000 + n
	SHA        string    // default: the ref's commit in the stand-in repo, or a stable fake
	// Extra adds or overrides claims (after the defaults); a nil value removes the claim.
	Extra map[string]any
}

func guessTier(env string) string {
	e := strings.ToLower(env)
	switch {
	case strings.Contains(e, "prod") || strings.Contains(e, "live"):
		return "production"
	case strings.Contains(e, "stag") || strings.Contains(e, "model") || strings.Contains(e, "demo"):
		return "staging"
	case strings.Contains(e, "test") || strings.Contains(e, "qa"):
		return "testing"
	case strings.Contains(e, "dev") || strings.Contains(e, "review") || strings.Contains(e, "trunk"):
		return "development"
	}
	return "other"
}

// IssueIDToken signs an ID token with GitLab's claims (Gitlab::Ci::JwtV2) for the job.
func (s *Server) IssueIDToken(job Job) string {
	claims := s.idTokenClaims(job)
	u := job.User
	if u == nil {
		u = s.AddUser("ci-user")
	}
	s.recordJob(claims, u, s.now())
	return s.SignClaims(claims, nil)
}

func (s *Server) idTokenClaims(job Job) map[string]any {
	p := job.Project
	if p == nil {
		p = &Project{ID: 1000, Name: "project", Path: "project", PathWithNamespace: "group/project", NamespaceID: 999, NamespacePath: "group", Visibility: "private"}
	}
	u := job.User
	if u == nil {
		u = s.AddUser("ci-user")
	}
	ref := job.Ref
	if ref == "" {
		ref = "main"
	}
	refType := job.RefType
	if refType == "" {
		refType = "branch"
	}
	refPath := "refs/heads/" + ref
	if refType == "tag" {
		refPath = "refs/tags/" + ref
	}
	// src is GitLab's source_project: the fork for a merge request from a
	// fork, else the project itself.
	src := p
	source := job.PipelineSource
	if job.SourceProject != nil {
		src = job.SourceProject
		if source == "" {
			source = "merge_request_event"
		}
	}
	if source == "" {
		source = "push"
	}
	runnerID := job.RunnerID
	if runnerID == 0 {
		runnerID = 1
	}
	runnerEnv := job.RunnerEnvironment
	if runnerEnv == "" {
		runnerEnv = "self-hosted"
	}
	timeout := job.Timeout
	if timeout <= 0 {
		timeout = 300 * time.Second
	}
	iat := job.IssuedAt
	if iat.IsZero() {
		iat = s.now()
	}
	s.mu.Lock()
	s.jobSeq++
	seq := s.jobSeq
	level := NoAccess
	if reg := s.projects[src.ID]; reg == src {
		level = s.projectAccessLocked(u, src)
	}
	visibility := visibilityOr(p.Visibility)
	s.mu.Unlock()
	pipelineID := job.PipelineID
	if pipelineID == 0 {
		pipelineID = 1000 + seq
	}
	jobID := job.JobID
	if jobID == 0 {
		jobID = 5000 + seq
	}
	sha := job.SHA
	if sha == "" {
		sha = s.refSHA(src, refPath)
	}
	host := s.url
	if pu, err := url.Parse(s.url); err == nil {
		host = pu.Hostname()
	}
	var accessLevel any
	if name := roleName(level); name != "" {
		accessLevel = name
	}
	c := map[string]any{
		"namespace_id":       strconv.FormatInt(src.NamespaceID, 10),
		"namespace_path":     src.NamespacePath,
		"project_id":         strconv.FormatInt(src.ID, 10),
		"project_path":       src.PathWithNamespace,
		"user_id":            strconv.FormatInt(u.ID, 10),
		"user_login":         u.Username,
		"user_email":         u.Email,
		"user_access_level":  accessLevel,
		"job_project_id":     strconv.FormatInt(p.ID, 10),
		"job_project_path":   p.PathWithNamespace,
		"job_namespace_id":   strconv.FormatInt(p.NamespaceID, 10),
		"job_namespace_path": p.NamespacePath,
		"pipeline_id":        strconv.FormatInt(pipelineID, 10),
		"pipeline_source":    source,
		"job_id":             strconv.FormatInt(jobID, 10),
		"ref":                ref,
		"ref_type":           refType,
		"ref_path":           refPath,
		"ref_protected":      strconv.FormatBool(job.RefProtected),
		"runner_id":          runnerID,
		"runner_environment": runnerEnv,
		"sha":                sha,
		"project_visibility": visibility,
		"ci_config_ref_uri":  host + "/" + p.PathWithNamespace + "//.gitlab-ci.yml@" + refPath,
		"ci_config_sha":      sha,
		"jti":                newUUID(),
		"iss":                s.url,
		"iat":                iat.Unix(),
		"nbf":                iat.Unix() - 5,
		"exp":                iat.Add(timeout).Unix(),
		"sub":                "project_path:" + src.PathWithNamespace + ":ref_type:" + refType + ":ref:" + ref,
	}
	if job.Environment != "" {
		tier := job.DeploymentTier
		if tier == "" {
			tier = guessTier(job.Environment)
		}
		action := job.EnvironmentAction
		if action == "" {
			action = "start"
		}
		c["environment"] = job.Environment
		c["environment_protected"] = strconv.FormatBool(job.EnvironmentProtected)
		c["deployment_tier"] = tier
		c["environment_action"] = action
	}
	switch len(job.Audience) {
	case 0:
		c["aud"] = s.url
	case 1:
		c["aud"] = job.Audience[0]
	default:
		c["aud"] = append([]string(nil), job.Audience...)
	}
	for k, v := range job.Extra {
		if v == nil {
			delete(c, k)
		} else {
			c[k] = v
		}
	}
	return c
}

func visibilityOr(v string) string {
	if v == "" {
		return "private"
	}
	return v
}

func newUUID() string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b)
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// refSHA is the ref's commit in the stand-in repository, or a stable fake for unknown projects.
func (s *Server) refSHA(p *Project, refPath string) string {
	s.mu.Lock()
	registered := s.projects[p.ID] == p
	s.mu.Unlock()
	if registered {
		out, err := exec.Command(s.gitPath, "--git-dir", s.repoDir(p), "rev-parse", "--verify", "-q", refPath).Output()
		if err == nil {
			return strings.TrimSpace(string(out))
		}
	}
	sum := sha1.Sum([]byte(p.PathWithNamespace + "@" + refPath))
	return hex.EncodeToString(sum[:])
}

// SignClaims signs arbitrary claims with the current CI key (RS256, header kid and typ JWT).
// header adds or overrides header fields (e.g. "jku", "alg" for negative tests); a nil value
// removes one.
func (s *Server) SignClaims(claims map[string]any, header map[string]any) string {
	s.mu.Lock()
	k := s.currentKeyLocked()
	s.mu.Unlock()
	t := jwt.NewWithClaims(jwt.SigningMethodRS256, jwt.MapClaims(claims))
	t.Header["kid"] = k.kid
	for hk, hv := range header {
		if hv == nil {
			delete(t.Header, hk)
		} else {
			t.Header[hk] = hv
		}
	}
	signed, err := t.SignedString(k.key)
	if err != nil {
		panic(fmt.Sprintf("gitlabfake: sign claims: %v", err))
	}
	return signed
}

// handleStandinIDToken is a STAND-IN-ONLY route (GitLab has nothing like it): it lets the demo
// and scripts ask for an ID token for a described job. It answers only loopback clients.
//
//	GET /-/standin/id_token?project=platform/app&ref=main&ref_type=branch&aud=https://x&aud=...
//	    &user=alice&ref_protected=true&environment=production&timeout=600&pipeline_source=push
//
// The answer is the token as text/plain. Without timeout the token lasts
// StandinIDTokenLifetime (1 h, GitLab's default job timeout).
func (s *Server) handleStandinIDToken(w http.ResponseWriter, r *http.Request, _ params) {
	if !isLoopbackRemote(r) {
		writeMessage(w, http.StatusForbidden, "stand-in: id_token is for loopback clients only")
		return
	}
	q := r.URL.Query()
	s.mu.Lock()
	p := s.projectsByPath[strings.Trim(q.Get("project"), "/")]
	var u *User
	if name := q.Get("user"); name != "" {
		u = s.usersByName[name]
	}
	s.mu.Unlock()
	if p == nil {
		writeMessage(w, http.StatusNotFound, "stand-in: unknown project "+strconv.Quote(q.Get("project")))
		return
	}
	if q.Get("user") != "" && u == nil {
		writeMessage(w, http.StatusNotFound, "stand-in: unknown user "+strconv.Quote(q.Get("user")))
		return
	}
	job := Job{
		Project:              p,
		User:                 u,
		Ref:                  q.Get("ref"),
		RefType:              q.Get("ref_type"),
		RefProtected:         q.Get("ref_protected") == "true",
		Environment:          q.Get("environment"),
		EnvironmentProtected: q.Get("environment_protected") == "true",
		DeploymentTier:       q.Get("deployment_tier"),
		PipelineSource:       q.Get("pipeline_source"),
		RunnerEnvironment:    q.Get("runner_environment"),
		Audience:             q["aud"],
	}
	if v := q.Get("timeout"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			writeMessage(w, http.StatusBadRequest, "stand-in: timeout must be a positive number of seconds")
			return
		}
		job.Timeout = time.Duration(n) * time.Second
	} else {
		// By hand, the token should last as long as a real job's: GitLab's
		// default job timeout is 1 h, and the demo says so.
		job.Timeout = StandinIDTokenLifetime
	}
	tok := s.IssueIDToken(job)
	w.Header().Set("Content-Type", "text/plain")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = w.Write([]byte(tok + "\n"))
}

// decodeClaims is a test helper: the payload of a compact JWT, unverified.
func decodeClaims(tok string) (map[string]any, error) {
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return nil, fmt.Errorf("not a JWT")
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return nil, err
	}
	var m map[string]any
	d := json.NewDecoder(strings.NewReader(string(b)))
	d.UseNumber()
	return m, d.Decode(&m)
}
