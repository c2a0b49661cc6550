package gitlabfake

import (
	"context"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/lestrrat-go/jwx/v2/jwk"
)

// verify checks tok against the stand-in's published JWKS the way a relying party does.
func verify(t *testing.T, s *Server, tok string, now time.Time) (jwt.MapClaims, error) {
	t.Helper()
	set, err := jwk.Fetch(context.Background(), s.URL()+"/oauth/discovery/keys")
	if err != nil {
		t.Fatal(err)
	}
	claims := jwt.MapClaims{}
	_, err = jwt.ParseWithClaims(tok, claims, func(tk *jwt.Token) (any, error) {
		kid, _ := tk.Header["kid"].(string)
		k, ok := set.LookupKeyID(kid)
		if !ok {
			return nil, fmt.Errorf("kid %q not in JWKS", kid)
		}
		var pub rsa.PublicKey
		if err := k.Raw(&pub); err != nil {
			return nil, err
		}
		return &pub, nil
	}, jwt.WithValidMethods([]string{"RS256"}), jwt.WithIssuer(s.URL()), jwt.WithTimeFunc(func() time.Time { return now }))
	return claims, err
}

func TestIDTokenClaimsAreGitLabs(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	alice := f.s.AddUser("alice")
	f.s.AddMember(alice, "platform", Developer)
	tok := f.s.IssueIDToken(Job{
		Project: f.project, User: alice, Ref: "main", RefProtected: true,
		Environment: "production", Audience: []string{"https://gltoken.example.com"}, Timeout: 10 * time.Minute,
	})
	claims, err := verify(t, f.s, tok, t0)
	if err != nil {
		t.Fatal(err)
	}
	wantStrings := map[string]string{
		"iss":                   f.s.URL(),
		"aud":                   "https://gltoken.example.com",
		"sub":                   "project_path:platform/app:ref_type:branch:ref:main",
		"project_path":          "platform/app",
		"project_id":            fmt.Sprint(f.project.ID),
		"namespace_path":        "platform",
		"namespace_id":          fmt.Sprint(f.project.NamespaceID),
		"job_project_path":      "platform/app",
		"user_login":            "alice",
		"user_id":               fmt.Sprint(alice.ID),
		"user_access_level":     "developer",
		"ref":                   "main",
		"ref_type":              "branch",
		"ref_path":              "refs/heads/main",
		"ref_protected":         "true",
		"environment":           "production",
		"environment_protected": "false",
		"deployment_tier":       "production",
		"runner_environment":    "self-hosted",
		"project_visibility":    "private",
		"pipeline_source":       "push",
	}
	for k, want := range wantStrings {
		if got, ok := claims[k].(string); !ok || got != want {
			t.Errorf("claim %s = %#v, want string %q", k, claims[k], want)
		}
	}
	for _, k := range []string{"pipeline_id", "job_id"} {
		if _, ok := claims[k].(string); !ok {
			t.Errorf("claim %s = %#v, want a string", k, claims[k])
		}
	}
	if id, ok := claims["runner_id"].(float64); !ok || id != 1 {
		t.Errorf("runner_id = %#v, want the number 1", claims["runner_id"])
	}
	iat := int64(claims["iat"].(float64))
	if iat != t0.Unix() || int64(claims["nbf"].(float64)) != iat-5 || int64(claims["exp"].(float64)) != iat+600 {
		t.Errorf("iat/nbf/exp = %v/%v/%v", claims["iat"], claims["nbf"], claims["exp"])
	}
	if !regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`).MatchString(claims["jti"].(string)) {
		t.Errorf("jti %v is not a UUID", claims["jti"])
	}
	if sha, _ := claims["sha"].(string); len(sha) != 40 {
		t.Errorf("sha %q", sha)
	}
	kid, _ := f.s.SigningKey()
	if hdr := decodeHeader(t, tok); hdr["kid"] != kid || hdr["alg"] != "RS256" || hdr["typ"] != "JWT" {
		t.Errorf("header %v", hdr)
	}

	// Several audiences make an array; Extra overrides types for negative tests.
	multi, _ := decodeClaims(f.s.IssueIDToken(Job{Project: f.project, Audience: []string{"a", "b"}, Extra: map[string]any{"ref_protected": true, "environment": nil}}))
	if arr, ok := multi["aud"].([]any); !ok || len(arr) != 2 {
		t.Errorf("aud with two audiences = %#v, want an array", multi["aud"])
	}
	if multi["ref_protected"] != true {
		t.Errorf("Extra did not override ref_protected: %#v", multi["ref_protected"])
	}
	if _, ok := multi["environment"]; ok {
		t.Error("a job without environment has environment claims")
	}
	// Expired at exp.
	if _, err := verify(t, f.s, tok, t0.Add(11*time.Minute)); !errors.Is(err, jwt.ErrTokenExpired) {
		t.Errorf("expired token: %v", err)
	}
}

// TestIDTokenOfForkMergeRequest: a job of a merge-request pipeline from the
// fork contrib/app into platform/app carries the claims Gitlab::Ci::Jwt gives
// it: project_*, namespace_*, user_access_level and sub from the merge
// request's source project (the fork), job_project_* and job_namespace_* from
// the project the pipeline runs in, ci_config_ref_uri naming the parent's CI
// file at the fork's branch, pipeline_source merge_request_event.
func TestIDTokenOfForkMergeRequest(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	fork := f.s.AddProject("contrib/app")
	mallory := f.s.AddUser("mallory")
	f.s.AddMember(mallory, "contrib/app", Maintainer)
	tok := f.s.IssueIDToken(Job{Project: f.project, SourceProject: fork, User: mallory, Ref: "fix-typo", Audience: []string{"x"}})
	claims, err := verify(t, f.s, tok, t0)
	if err != nil {
		t.Fatal(err)
	}
	host := strings.TrimPrefix(strings.TrimPrefix(f.s.URL(), "http://"), "https://")
	host, _, _ = strings.Cut(host, ":")
	want := map[string]string{
		"project_id":         fmt.Sprint(fork.ID),
		"project_path":       "contrib/app",
		"namespace_id":       fmt.Sprint(fork.NamespaceID),
		"namespace_path":     "contrib",
		"job_project_id":     fmt.Sprint(f.project.ID),
		"job_project_path":   "platform/app",
		"job_namespace_id":   fmt.Sprint(f.project.NamespaceID),
		"job_namespace_path": "platform",
		"user_login":         "mallory",
		"user_access_level":  "maintainer", // the user's role in the fork
		"pipeline_source":    "merge_request_event",
		"ref":                "fix-typo",
		"ref_path":           "refs/heads/fix-typo",
		"sub":                "project_path:contrib/app:ref_type:branch:ref:fix-typo",
		"ci_config_ref_uri":  host + "/platform/app//.gitlab-ci.yml@refs/heads/fix-typo",
	}
	for k, w := range want {
		if got, _ := claims[k].(string); got != w {
			t.Errorf("claim %s = %#v, want %q", k, claims[k], w)
		}
	}
}

func decodeHeader(t *testing.T, tok string) map[string]any {
	t.Helper()
	p, err := jwt.NewParser().DecodeSegment(strings.Split(tok, ".")[0])
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(p, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func TestSigningKeyRotationAndDrop(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	oldKID, _ := f.s.SigningKey()
	oldTok := f.s.IssueIDToken(Job{Project: f.project})

	newKID := f.s.AddSigningKey()
	if newKID == oldKID {
		t.Fatal("new key has the old kid")
	}
	if k, _ := f.s.SigningKey(); k != oldKID {
		t.Fatal("AddSigningKey must not switch the signing key")
	}
	f.s.UseSigningKey(newKID)
	newTok := f.s.IssueIDToken(Job{Project: f.project})
	if _, err := verify(t, f.s, oldTok, t0); err != nil {
		t.Fatalf("old token while both keys are published: %v", err)
	}
	f.s.DropSigningKey(oldKID)
	if _, err := verify(t, f.s, oldTok, t0); err == nil {
		t.Fatal("a token signed by a dropped key still verifies")
	}
	if _, err := verify(t, f.s, newTok, t0); err != nil {
		t.Fatalf("token of the current key: %v", err)
	}

	resp, err := http.Get(f.s.URL() + "/oauth/discovery/keys")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if cc := resp.Header.Get("Cache-Control"); !strings.Contains(cc, "max-age=86400") {
		t.Fatalf("Cache-Control %q", cc)
	}
	var jwks struct{ Keys []map[string]string }
	if err := json.NewDecoder(resp.Body).Decode(&jwks); err != nil {
		t.Fatal(err)
	}
	// GitLab publishes its OIDC key next to the CI key(s); the dropped key is gone.
	var kids []string
	for _, k := range jwks.Keys {
		if k["use"] != "sig" || k["alg"] != "RS256" || k["kty"] != "RSA" || k["e"] != "AQAB" {
			t.Fatalf("JWKS entry %v", k)
		}
		kids = append(kids, k["kid"])
	}
	if len(kids) != 2 || kids[1] != newKID || kids[0] == oldKID || kids[0] == newKID {
		t.Fatalf("JWKS kids %v, want [oidc-key %s]", kids, newKID)
	}

	// SignClaims adds header fields for negative tests.
	signed := f.s.SignClaims(map[string]any{"iss": f.s.URL()}, map[string]any{"jku": "https://evil.example/keys"})
	if decodeHeader(t, signed)["jku"] != "https://evil.example/keys" {
		t.Fatal("SignClaims ignored the extra header")
	}
}

func TestDiscovery(t *testing.T) {
	t.Parallel()
	s := Start(t, Options{})
	resp, err := http.Get(s.URL() + "/.well-known/openid-configuration")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var d map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&d); err != nil {
		t.Fatal(err)
	}
	if d["issuer"] != s.URL() || d["jwks_uri"] != s.URL()+"/oauth/discovery/keys" {
		t.Fatalf("discovery %v", d)
	}
}

func TestStandinIDTokenRoute(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	resp, err := http.Get(f.s.URL() + "/-/standin/id_token?project=platform/app&ref=v1.0&ref_type=tag&aud=https://x.example")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	claims, err := verify(t, f.s, strings.TrimSpace(string(body)), t0)
	if err != nil {
		t.Fatal(err)
	}
	if claims["sub"] != "project_path:platform/app:ref_type:tag:ref:v1.0" || claims["aud"] != "https://x.example" || claims["ref_path"] != "refs/tags/v1.0" {
		t.Fatalf("claims %v", claims)
	}
	if life := claims["exp"].(float64) - claims["iat"].(float64); life != 3600 {
		t.Fatalf("a token asked for by hand lasts %vs, want 3600 (1 h, as the demo says)", life)
	}
	r2, err := http.Get(f.s.URL() + "/-/standin/id_token?project=nope/nope")
	if err != nil {
		t.Fatal(err)
	}
	r2.Body.Close()
	if r2.StatusCode != 404 {
		t.Fatalf("unknown project: %d", r2.StatusCode)
	}
}
