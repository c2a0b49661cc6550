package gitlabfake

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base32"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

const (
	registryIssuer  = "gitlab-issuer"
	registryService = "container_registry"
	registryTTL     = 5 * time.Minute // container_registry_token_expire_delay default
)

func (s *Server) ensureRegistryKey() error {
	s.registryOnce.Do(func() { s.registryErr = s.initRegistryKey() })
	return s.registryErr
}

func (s *Server) initRegistryKey() error {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return fmt.Errorf("gitlabfake: registry key: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: registryIssuer},
		NotBefore:             now.Add(-24 * time.Hour),
		NotAfter:              now.AddDate(10, 0, 0),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		return fmt.Errorf("gitlabfake: registry certificate: %w", err)
	}
	s.registryKey = k
	s.registryCert = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	return nil
}

// registryProjectLocked is ContainerRegistry::Path#repository_project: an image path (lower
// case) of 2 to 19 segments belongs to the project whose full path is one of its three longest
// prefixes of two segments or more (LEVELS_SUPPORTED: an image at most two levels below the
// project, "group/project/a/b"), found ignoring case and without redirects
// (Project.where_full_path_in). Two of those cannot both be projects: a project has no
// subgroups.
func (s *Server) registryProjectLocked(path string) *Project {
	segs := strings.Split(path, "/")
	if len(segs) < 2 || len(segs) >= 20 || slices.Contains(segs, "") {
		return nil
	}
	for n := len(segs); n >= 2 && n > len(segs)-3; n-- {
		cand := strings.Join(segs[:n], "/")
		for full, p := range s.projectsByPath {
			if strings.EqualFold(full, cand) {
				return p
			}
		}
	}
	return nil
}

// LibtrustKeyID is the key id format of docker/libtrust and GitLab's JSONWebToken::RSAToken:
// base32 of the first 240 bits of the SHA-256 of the DER (PKIX) public key, in 12 groups of 4
// joined by ':'.
func LibtrustKeyID(pub *rsa.PublicKey) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(der)
	enc := strings.TrimRight(base32.StdEncoding.EncodeToString(sum[:30]), "=")
	var groups []string
	for i := 0; i < len(enc); i += 4 {
		groups = append(groups, enc[i:i+4])
	}
	return strings.Join(groups, ":"), nil
}

type registryAccess struct {
	Type    string         `json:"type"`
	Name    string         `json:"name"`
	Actions []string       `json:"actions"`
	Meta    map[string]any `json:"meta,omitempty"`
}

func registryErr(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, map[string]any{"errors": []map[string]string{{"code": code, "message": msg}}})
}

// handleRegistryAuth is GitLab's JwtController#auth for the container registry.
func (s *Server) handleRegistryAuth(w http.ResponseWriter, r *http.Request, _ params) {
	q := r.URL.Query()
	if q.Get("service") != registryService {
		w.WriteHeader(http.StatusNotFound)
		return
	}
	if err := s.ensureRegistryKey(); err != nil {
		writeMessage(w, http.StatusInternalServerError, "500 Internal Server Error")
		return
	}
	login, password, hasAuth := r.BasicAuth()
	s.mu.Lock()
	defer s.mu.Unlock()
	actor := &gitActor{abilities: abilitiesForScopes([]string{"read_api"})} // anonymous
	if hasAuth {
		actor = s.findForGitClientLocked(login, password, nil)
		if actor == nil {
			registryErr(w, http.StatusUnauthorized, "UNAUTHORIZED",
				"HTTP Basic: Access denied. If a password was provided for Git authentication, the password was incorrect or you're required to use a token instead of a password. If a token was provided, it was either incorrect, expired, or improperly scoped. See "+s.url+"/help/user/profile/account/two_factor_authentication_troubleshooting.md#error-http-basic-access-denied-if-a-password-was-provided-for-git-authentication-")
			return
		}
	}
	if !actor.abilities[abReadContainerImage] && !actor.abilities[abCreateContainerImage] && !actor.abilities[abAdminContainerImage] {
		registryErr(w, http.StatusForbidden, "DENIED", "access forbidden")
		return
	}
	// Docker sends one scope parameter per scope; RFC 6749 clients may space-separate them.
	var scopes []string
	for _, sc := range q["scope"] {
		scopes = append(scopes, strings.Fields(sc)...)
	}
	if len(scopes) == 0 && actor.anonymous() {
		registryErr(w, http.StatusForbidden, "DENIED", "access forbidden")
		return
	}
	accesses := []registryAccess{}
	for _, sc := range scopes {
		if a := s.registryScopeLocked(actor, sc); a != nil {
			accesses = append(accesses, *a)
		}
	}
	now := s.now()
	claims := jwt.MapClaims{
		"jti":    newUUID(),
		"aud":    registryService,
		"iss":    registryIssuer,
		"iat":    now.Unix(),
		"nbf":    now.Unix() - 5,
		"exp":    now.Add(registryTTL).Unix(),
		"access": accesses,
	}
	if name := actor.name(); name != "" {
		claims["sub"] = name
	}
	if actor.deploy != nil {
		claims["auth_type"] = "deploy_token"
	} else if actor.oauth {
		claims["auth_type"] = "oauth"
	} else if actor.user != nil {
		claims["auth_type"] = "personal_access_token"
	} else {
		claims["auth_type"] = "none"
	}
	t := jwt.NewWithClaims(jwt.SigningMethodRS256, claims)
	delete(t.Header, "typ") // ruby-jwt sends only alg and kid
	kid, err := LibtrustKeyID(&s.registryKey.PublicKey)
	if err != nil {
		writeMessage(w, http.StatusInternalServerError, "500 Internal Server Error")
		return
	}
	t.Header["kid"] = kid
	signed, err := t.SignedString(s.registryKey)
	if err != nil {
		writeMessage(w, http.StatusInternalServerError, "500 Internal Server Error")
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"token": signed})
}

// registryScopeLocked grants the subset of requested actions the actor may perform on the
// repository named in scope "repository:PATH:ACTIONS", as
// Auth::ContainerRegistryAuthenticationService#process_repository_access does.
func (s *Server) registryScopeLocked(a *gitActor, scope string) *registryAccess {
	parts := strings.Split(scope, ":")
	if len(parts) < 3 {
		return nil
	}
	typ, actions := parts[0], strings.Split(parts[len(parts)-1], ",")
	name := strings.ToLower(strings.Join(parts[1:len(parts)-1], ":"))
	if typ != "repository" {
		return nil // registry:catalog:* is for administrators of the registry, not modelled
	}
	project := s.registryProjectLocked(name)
	if project == nil {
		return nil
	}
	var granted []string
	for _, act := range actions {
		var ok bool
		switch act {
		case "pull":
			ok = a.abilities[abReadContainerImage] && s.actorCanLocked(a, project, abReadContainerImage)
		case "push":
			ok = a.abilities[abCreateContainerImage] && s.actorCanLocked(a, project, abCreateContainerImage)
		case "delete", "*":
			ok = a.abilities[abAdminContainerImage] && s.actorCanLocked(a, project, abAdminContainerImage)
		}
		if ok && !slices.Contains(granted, act) {
			granted = append(granted, act)
		}
	}
	if len(granted) == 0 {
		return nil
	}
	root := project.NamespacePath
	if i := strings.Index(root, "/"); i >= 0 {
		root = root[:i]
	}
	var rootID int64
	if g := s.groupsByPath[root]; g != nil {
		rootID = g.ID
	}
	return &registryAccess{
		Type: "repository", Name: name, Actions: granted,
		Meta: map[string]any{"project_path": strings.ToLower(project.PathWithNamespace), "project_id": project.ID, "root_namespace_id": rootID},
	}
}
