package idtoken

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"gltoken.dev/gltoken/internal/syncbuf"
)

func TestVerifyValidToken(t *testing.T) {
	clk := newClock()
	k := newRSAKey(t, "kid-1")
	srv := newJWKSServer(t, k)
	v := newTestVerifier(t, srv, clk)
	if !v.Ready() {
		t.Fatal("Ready() = false after a successful first fetch")
	}

	claims := with(gitlabClaims(clk.Now()), map[string]any{
		"custom_float": 1.5,
		"custom_exp":   json.Number("1e3"),
		"custom_bool":  true,
		"custom_obj":   map[string]any{"a": 1},
		"custom_null":  nil,
	})
	claims["custom_null"] = nil // explicit JSON null
	tok, err := v.Verify(t.Context(), mint(t, k, nil, claims))
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	now := clk.Now()
	if tok.Issuer != testIssuer || tok.Subject != "project_path:platform/app:ref_type:branch:ref:main" ||
		tok.ID != "0b5e3bb8-1f6d-4d4b-9b9f-4c7f0d7c8a11" || tok.KeyID != "kid-1" {
		t.Errorf("token = %+v", tok)
	}
	if !slices.Equal(tok.Audience, []string{testAudience}) {
		t.Errorf("Audience = %v", tok.Audience)
	}
	if !tok.IssuedAt.Equal(now) || !tok.NotBefore.Equal(now.Add(-5*time.Second)) || !tok.Expiry.Equal(now.Add(300*time.Second)) {
		t.Errorf("times iat %v nbf %v exp %v", tok.IssuedAt, tok.NotBefore, tok.Expiry)
	}
	want := map[string]string{
		"iss":                testIssuer,
		"sub":                "project_path:platform/app:ref_type:branch:ref:main",
		"jti":                "0b5e3bb8-1f6d-4d4b-9b9f-4c7f0d7c8a11",
		"iat":                "1777636800",
		"nbf":                "1777636795",
		"exp":                "1777637100",
		"namespace_id":       "10",
		"namespace_path":     "platform",
		"project_id":         "7",
		"project_path":       "platform/app",
		"user_id":            "1",
		"user_login":         "root",
		"user_email":         "admin@example.com",
		"user_access_level":  "owner",
		"pipeline_id":        "12",
		"pipeline_source":    "push",
		"job_id":             "23",
		"ref":                "main",
		"ref_type":           "branch",
		"ref_path":           "refs/heads/main",
		"ref_protected":      "true",
		"runner_id":          "42",
		"runner_environment": "self-hosted",
		"sha":                "5f2c0f6d8f0b5e1c2b9c7a3e4d5f6a7b8c9d0e1f",
		"project_visibility": "private",
		"custom_float":       "1.5",
		"custom_exp":         "1000",
		"custom_bool":        "true",
	}
	for name, w := range want {
		if got, ok := tok.Claims[name]; !ok || got != w {
			t.Errorf("Claims[%q] = %q, %v; want %q", name, got, ok, w)
		}
	}
	for name := range tok.Claims {
		if _, ok := want[name]; !ok {
			t.Errorf("unexpected Claims[%q] = %q", name, tok.Claims[name])
		}
	}
	if got := tok.ClaimLists["groups_direct"]; !slices.Equal(got, []string{"platform", "platform/tools"}) {
		t.Errorf("ClaimLists[groups_direct] = %v", got)
	}
	if _, ok := tok.ClaimLists["user_identities"]; ok {
		t.Error("user_identities (objects) should be dropped")
	}
	if ok, failed := v.Refreshes(); ok != 1 || failed != 0 {
		t.Errorf("Refreshes() = %d, %d; want 1, 0", ok, failed)
	}
}

func TestVerifyRejects(t *testing.T) {
	clk := newClock()
	now := clk.Now()
	rsaKey := newRSAKey(t, "rsa-1")
	otherKey := newRSAKey(t, "rsa-2") // never published
	ecKey := newECKey(t, "ec-1")      // published, but ES256 is not allowed
	srv := newJWKSServer(t, rsaKey, ecKey)
	logs := &syncbuf.Buffer{} // the verifier's goroutines write it
	v := newTestVerifier(t, srv, clk, func(c *Config) {
		c.Logger = slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	})
	good := gitlabClaims(now)

	pubDER, err := x509.MarshalPKIXPublicKey(rsaKey.priv.Public())
	must(t, err)
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})
	hdr := func(m map[string]any) []byte {
		b, err := json.Marshal(m)
		must(t, err)
		return b
	}
	payload, err := json.Marshal(good)
	must(t, err)
	validHeader := []byte(`{"alg":"RS256","kid":"rsa-1","typ":"JWT"}`)
	signed := func(header, body string) string {
		return mintRaw(t, "RS256", rsaKey.priv, []byte(header), []byte(body))
	}
	// payloadWith replaces one claim's raw JSON in the good payload.
	payloadWith := func(name, rawJSON string) string {
		m := map[string]json.RawMessage{}
		must(t, json.Unmarshal(payload, &m))
		m[name] = json.RawMessage(rawJSON)
		b, err := json.Marshal(m)
		must(t, err)
		return string(b)
	}
	validTok := mint(t, rsaKey, nil, good)
	parts := strings.Split(validTok, ".")

	tests := []struct {
		name  string
		token string
		want  []error // all must match with errors.Is; nil: must verify
	}{
		{"valid", validTok, nil},
		{"valid without a user (null user claims)", mint(t, rsaKey, nil, with(good, map[string]any{"user_login": json.RawMessage("null"), "user_email": json.RawMessage("null"), "user_access_level": json.RawMessage("null"), "user_id": ""})), nil},
		{"alg none", b64([]byte(`{"alg":"none","kid":"rsa-1","typ":"JWT"}`)) + "." + b64(payload) + ".", []error{ErrAlgorithm}},
		{"alg none with signature", b64([]byte(`{"alg":"none","kid":"rsa-1"}`)) + "." + b64(payload) + ".c2ln", []error{ErrAlgorithm}},
		{"alg missing", b64([]byte(`{"kid":"rsa-1"}`)) + "." + b64(payload) + "." + parts[2], []error{ErrAlgorithm}},
		{"alg not a string", b64([]byte(`{"alg":["RS256"],"kid":"rsa-1"}`)) + "." + b64(payload) + "." + parts[2], []error{ErrAlgorithm}},
		{"HS256 signed with the RSA public key", mintRaw(t, "HS256", pubPEM, hdr(map[string]any{"alg": "HS256", "kid": "rsa-1", "typ": "JWT"}), payload), []error{ErrAlgorithm}},
		{"HS256 signed with the RSA public key DER", mintRaw(t, "HS256", pubDER, hdr(map[string]any{"alg": "HS256", "kid": "rsa-1"}), payload), []error{ErrAlgorithm}},
		{"RS256 with an unknown key", mint(t, otherKey, nil, good), []error{ErrUnknownKey}},
		{"RS256 known kid, other key", mint(t, otherKey, map[string]any{"kid": "rsa-1"}, good), []error{ErrSignature}},
		{"ES256 when only RS256 is allowed", mint(t, ecKey, nil, good), []error{ErrAlgorithm}},
		{"RS512 when only RS256 is allowed", mint(t, rsaKey, map[string]any{"alg": "RS512"}, good), []error{ErrAlgorithm}},
		{"tampered payload", b64(validHeader) + "." + b64([]byte(payloadWith("project_path", `"platform/secret"`))) + "." + parts[2], []error{ErrSignature}},
		{"expired", mint(t, rsaKey, nil, with(good, map[string]any{"iat": now.Unix() - 400, "nbf": now.Unix() - 405, "exp": now.Unix() - 61})), []error{ErrExpired}},
		{"expired within leeway", mint(t, rsaKey, nil, with(good, map[string]any{"iat": now.Unix() - 400, "nbf": now.Unix() - 405, "exp": now.Unix() - 59})), nil},
		{"nbf beyond leeway", mint(t, rsaKey, nil, with(good, map[string]any{"nbf": now.Unix() + 61, "iat": now.Unix() - 10})), []error{ErrNotYetValid}},
		{"nbf within leeway", mint(t, rsaKey, nil, with(good, map[string]any{"nbf": now.Unix() + 59, "iat": now.Unix() - 10})), nil},
		{"iat in the future", mint(t, rsaKey, nil, with(good, map[string]any{"iat": now.Unix() + 120, "nbf": nil})), []error{ErrIssuedInFuture}},
		{"iat within leeway", mint(t, rsaKey, nil, with(good, map[string]any{"iat": now.Unix() + 30, "nbf": nil})), nil},
		{"wrong iss", mint(t, rsaKey, nil, with(good, map[string]any{"iss": "https://evil.example.com"})), []error{ErrIssuer}},
		{"iss with trailing slash", mint(t, rsaKey, nil, with(good, map[string]any{"iss": testIssuer + "/"})), []error{ErrIssuer}},
		{"iss host only (old CI_JOB_JWT)", mint(t, rsaKey, nil, with(good, map[string]any{"iss": "gitlab.example.com"})), []error{ErrIssuer}},
		{"missing aud", mint(t, rsaKey, nil, with(good, map[string]any{"aud": nil})), []error{ErrMissingClaim}},
		{"wrong aud", mint(t, rsaKey, nil, with(good, map[string]any{"aud": "https://vault.example.com"})), []error{ErrAudience}},
		{"aud array containing ours", mint(t, rsaKey, nil, with(good, map[string]any{"aud": []string{"https://vault.example.com", testAudience}})), nil},
		{"aud array without ours", mint(t, rsaKey, nil, with(good, map[string]any{"aud": []string{"https://vault.example.com"}})), []error{ErrAudience}},
		{"empty aud array", mint(t, rsaKey, nil, with(good, map[string]any{"aud": []string{}})), []error{ErrMissingClaim}},
		{"missing exp", mint(t, rsaKey, nil, with(good, map[string]any{"exp": nil})), []error{ErrMissingClaim}},
		{"missing iat", mint(t, rsaKey, nil, with(good, map[string]any{"iat": nil})), []error{ErrMissingClaim}},
		{"missing sub", mint(t, rsaKey, nil, with(good, map[string]any{"sub": nil})), []error{ErrMissingClaim}},
		{"empty sub", mint(t, rsaKey, nil, with(good, map[string]any{"sub": ""})), []error{ErrMissingClaim}},
		{"missing iss", mint(t, rsaKey, nil, with(good, map[string]any{"iss": nil})), []error{ErrMissingClaim}},
		{"expired and wrong iss and aud", mint(t, rsaKey, nil, with(good, map[string]any{"exp": now.Unix() - 3600, "iss": "x", "aud": "y"})), []error{ErrExpired, ErrIssuer, ErrAudience}},
		{"jku header", mint(t, rsaKey, map[string]any{"jku": "https://evil.example.com/keys"}, good), []error{ErrForbiddenHeader}},
		{"x5u header", mint(t, rsaKey, map[string]any{"x5u": "https://evil.example.com/cert"}, good), []error{ErrForbiddenHeader}},
		{"jwk header", mint(t, rsaKey, map[string]any{"jwk": rsaKey.publicJWK(t)}, good), []error{ErrForbiddenHeader}},
		{"x5c header", mint(t, rsaKey, map[string]any{"x5c": []string{"MIIB"}}, good), []error{ErrForbiddenHeader}},
		{"crit header", mint(t, rsaKey, map[string]any{"crit": []string{"exp"}}, good), []error{ErrForbiddenHeader}},
		{"missing kid", mint(t, rsaKey, map[string]any{"kid": nil}, good), []error{ErrMalformed}},
		{"empty kid", mint(t, rsaKey, map[string]any{"kid": ""}, good), []error{ErrMalformed}},
		{"numeric kid", mint(t, rsaKey, map[string]any{"kid": 1}, good), []error{ErrMalformed}},
		{"typ not JWT", mint(t, rsaKey, map[string]any{"typ": "at+jwt"}, good), []error{ErrMalformed}},
		{"oversize token", validTok + strings.Repeat("A", DefaultMaxTokenBytes), []error{ErrTooLarge}},
		{"empty string", "", []error{ErrMalformed}},
		{"one segment", "abc", []error{ErrMalformed}},
		{"two segments", parts[0] + "." + parts[1], []error{ErrMalformed}},
		{"four segments", validTok + ".x", []error{ErrMalformed}},
		{"empty header", "." + parts[1] + "." + parts[2], []error{ErrMalformed}},
		{"empty payload", parts[0] + ".." + parts[2], []error{ErrMalformed}},
		{"empty signature", parts[0] + "." + parts[1] + ".", []error{ErrMalformed}},
		{"header not base64url", "!!!." + parts[1] + "." + parts[2], []error{ErrMalformed}},
		{"header padded", parts[0] + "=." + parts[1] + "." + parts[2], []error{ErrMalformed}},
		{"header std base64", strings.NewReplacer("-", "+", "_", "/").Replace(b64([]byte(`{"alg":"RS256","kid":"rsa-1","x":"??>"}`))) + "." + parts[1] + "." + parts[2], []error{ErrMalformed}},
		{"header not JSON", b64([]byte(`not json`)) + "." + parts[1] + "." + parts[2], []error{ErrMalformed}},
		{"header JSON array", b64([]byte(`["RS256"]`)) + "." + parts[1] + "." + parts[2], []error{ErrMalformed}},
		{"header trailing data", b64([]byte(`{"alg":"RS256","kid":"rsa-1"} {}`)) + "." + parts[1] + "." + parts[2], []error{ErrMalformed}},
		{"header duplicate alg", signed(`{"alg":"RS256","kid":"rsa-1","alg":"none"}`, string(payload)), []error{ErrMalformed}},
		{"payload not base64url", parts[0] + ".%%%." + parts[2], []error{ErrMalformed}},
		{"payload not JSON", signed(string(validHeader), "not json"), []error{ErrMalformed}},
		{"payload JSON array", signed(string(validHeader), `[1,2]`), []error{ErrMalformed}},
		{"payload trailing data", signed(string(validHeader), string(payload)+`{"iss":"x"}`), []error{ErrMalformed}},
		{"payload duplicate iss", signed(string(validHeader), strings.Replace(string(payload), `{`, `{"iss":"https://evil.example.com",`, 1)), []error{ErrMalformed}},
		{"signature not base64url", parts[0] + "." + parts[1] + ".***", []error{ErrMalformed}},
		{"runner_id as string", signed(string(validHeader), payloadWith("runner_id", `"42"`)), []error{ErrMalformed}},
		{"runner_id fractional", signed(string(validHeader), payloadWith("runner_id", `42.5`)), []error{ErrMalformed}},
		{"project_id as number", signed(string(validHeader), payloadWith("project_id", `7`)), []error{ErrMalformed}},
		{"ref_protected as boolean", signed(string(validHeader), payloadWith("ref_protected", `true`)), []error{ErrMalformed}},
		{"ref_protected not true/false", signed(string(validHeader), payloadWith("ref_protected", `"yes"`)), []error{ErrMalformed}},
		{"exp as string", signed(string(validHeader), payloadWith("exp", `"1777637100"`)), []error{ErrMalformed}},
		{"exp negative", signed(string(validHeader), payloadWith("exp", `-1`)), []error{ErrMalformed}},
		{"exp huge", signed(string(validHeader), payloadWith("exp", `1e300`)), []error{ErrMalformed}},
		{"iss as number", signed(string(validHeader), payloadWith("iss", `1`)), []error{ErrMalformed}},
		{"aud as number", signed(string(validHeader), payloadWith("aud", `5`)), []error{ErrMalformed}},
		{"aud array with number", signed(string(validHeader), payloadWith("aud", `["`+testAudience+`",5]`)), []error{ErrMalformed}},
		{"aud array with null", signed(string(validHeader), payloadWith("aud", `["`+testAudience+`",null]`)), []error{ErrMalformed}},
		{"groups_direct as string", signed(string(validHeader), payloadWith("groups_direct", `"platform"`)), []error{ErrMalformed}},
		{"user_identities as string", signed(string(validHeader), payloadWith("user_identities", `"x"`)), []error{ErrMalformed}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tok, err := v.Verify(t.Context(), tt.token)
			if tt.want == nil {
				if err != nil {
					t.Fatalf("Verify: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Verify succeeded (sub %q); want %v", tok.Subject, tt.want)
			}
			t.Logf("error: %v", err)
			for _, w := range tt.want {
				if !errors.Is(err, w) {
					t.Errorf("error %q is not %v", err, w)
				}
			}
			for _, other := range []error{ErrKeysUnavailable, ErrTooLarge} {
				if !slices.Contains(tt.want, other) && errors.Is(err, other) {
					t.Errorf("error %q is unexpectedly %v", err, other)
				}
			}
			if leaks(err.Error(), tt.token) {
				t.Errorf("error leaks the token: %q", err)
			}
		})
	}
	for _, tt := range tests {
		if leaks(logs.String(), tt.token) {
			t.Errorf("log leaks the token of %q", tt.name)
		}
	}
}

// leaks reports whether s contains token or one of its longer segments.
func leaks(s, token string) bool {
	for _, seg := range append(strings.Split(token, "."), token) {
		if len(seg) > 20 && strings.Contains(s, seg) {
			return true
		}
	}
	return false
}

func TestAlgorithmKeyMismatch(t *testing.T) {
	clk := newClock()
	rsaKey := newRSAKey(t, "rsa-1")
	ecKey := newECKey(t, "ec-1")
	noAlg := newRSAKey(t, "rsa-noalg")
	noAlg.jwkAlg = ""
	_, edPriv, err := ed25519.GenerateKey(rand.Reader)
	must(t, err)
	edKey := &testKey{kid: "ed-1", alg: "EdDSA", jwkAlg: "EdDSA", use: "sig", priv: edPriv}
	srv := newJWKSServer(t, rsaKey, ecKey, noAlg, edKey)
	v := newTestVerifier(t, srv, clk, func(c *Config) {
		c.Algorithms = []string{"RS256", "PS256", "ES256", "ES384", "EdDSA"}
	})
	claims := gitlabClaims(clk.Now())
	tests := []struct {
		name  string
		token string
		want  error
	}{
		{"ES256 allowed and fits", mint(t, ecKey, nil, claims), nil},
		{"EdDSA allowed and fits", mint(t, edKey, nil, claims), nil},
		{"EdDSA header naming an EC key", mintRaw(t, "EdDSA", edPriv, []byte(`{"alg":"EdDSA","kid":"ec-1"}`), mustJSON(t, claims)), ErrAlgorithm},
		{"PS256 with a JWK that says RS256", mint(t, rsaKey, map[string]any{"alg": "PS256"}, claims), ErrAlgorithm},
		{"PS256 with an RSA JWK without alg", mint(t, noAlg, map[string]any{"alg": "PS256"}, claims), nil},
		{"ES256 header naming the RSA key", mintRaw(t, "ES256", ecKey.priv, []byte(`{"alg":"ES256","kid":"rsa-noalg"}`), mustJSON(t, claims)), ErrAlgorithm},
		{"ES384 header naming a P-256 key", mintRaw(t, "ES256", ecKey.priv, []byte(`{"alg":"ES384","kid":"ec-1"}`), mustJSON(t, claims)), ErrAlgorithm},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := v.Verify(t.Context(), tt.token)
			if tt.want == nil {
				if err != nil {
					t.Fatalf("Verify: %v", err)
				}
				return
			}
			if !errors.Is(err, tt.want) {
				t.Fatalf("Verify error %v; want %v", err, tt.want)
			}
		})
	}
}

func mustJSON(tb testing.TB, v any) []byte {
	tb.Helper()
	b, err := json.Marshal(v)
	must(tb, err)
	return b
}

func TestConfig(t *testing.T) {
	base := func() Config {
		return Config{Issuer: testIssuer, Audience: testAudience}
	}
	bad := []struct {
		name string
		mod  func(*Config)
	}{
		{"no issuer", func(c *Config) { c.Issuer = "" }},
		{"issuer with trailing slash", func(c *Config) { c.Issuer = testIssuer + "/" }},
		{"issuer not a URL", func(c *Config) { c.Issuer = "gitlab.example.com" }},
		{"issuer ftp", func(c *Config) { c.Issuer = "ftp://gitlab.example.com" }},
		{"issuer with query", func(c *Config) { c.Issuer = testIssuer + "?x=1" }},
		{"JWKS URL relative", func(c *Config) { c.JWKSURL = "/oauth/discovery/keys" }},
		{"JWKS URL plain http", func(c *Config) { c.JWKSURL = "http://gitlab.example.com/oauth/discovery/keys" }},
		{"issuer plain http (JWKS derived)", func(c *Config) { c.Issuer = "http://gitlab.example.com" }},
		{"no audience", func(c *Config) { c.Audience = "" }},
		{"alg none", func(c *Config) { c.Algorithms = []string{"none"} }},
		{"alg HS256", func(c *Config) { c.Algorithms = []string{"RS256", "HS256"} }},
		{"alg unknown", func(c *Config) { c.Algorithms = []string{"RS1"} }},
		{"leeway over 60s", func(c *Config) { c.Leeway = 61 * time.Second }},
		{"leeway negative", func(c *Config) { c.Leeway = -time.Second }},
		{"cooldown negative", func(c *Config) { c.RefreshCooldown = -time.Second }},
		{"refresh interval below 1s", func(c *Config) { c.RefreshInterval = 500 * time.Millisecond }},
		{"max token bytes negative", func(c *Config) { c.MaxTokenBytes = -1 }},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			cfg := base()
			tt.mod(&cfg)
			if v, err := New(t.Context(), cfg); err == nil {
				v.Close()
				t.Fatal("New succeeded; want a config error")
			}
		})
	}

	t.Run("defaults", func(t *testing.T) {
		v, err := newVerifier(base())
		if err != nil {
			t.Fatal(err)
		}
		if v.jwksURL != testIssuer+"/oauth/discovery/keys" || v.leeway != 60*time.Second ||
			v.cooldown != 30*time.Second || v.maxTokenBytes != 16<<10 || !slices.Equal(v.algs, []string{"RS256"}) {
			t.Errorf("defaults: jwks %s leeway %s cooldown %s max %d algs %v", v.jwksURL, v.leeway, v.cooldown, v.maxTokenBytes, v.algs)
		}
	})

	t.Run("plain http allowed to loopback or when insecure is set", func(t *testing.T) {
		for _, cfg := range []Config{
			{Issuer: "http://127.0.0.1:8080", Audience: testAudience},
			{Issuer: "http://[::1]:8080", Audience: testAudience},
			{Issuer: "http://localhost", Audience: testAudience},
			{Issuer: "http://gitlab.lab", Audience: testAudience, InsecureAllowHTTPJWKS: true},
		} {
			if _, err := newVerifier(cfg); err != nil {
				t.Errorf("%s: %v", cfg.Issuer, err)
			}
		}
	})

	t.Run("JWKS URL derived from the issuer", func(t *testing.T) {
		clk := newClock()
		k := newRSAKey(t, "kid-1")
		srv := newJWKSServer(t, k)
		v, err := New(t.Context(), Config{Issuer: srv.URL, Audience: testAudience, Now: clk.Now})
		if err != nil {
			t.Fatal(err)
		}
		defer v.Close()
		if !v.Ready() || srv.count() != 1 {
			t.Fatalf("Ready %v after %d requests", v.Ready(), srv.count())
		}
		if _, err := v.Verify(t.Context(), mint(t, k, nil, with(gitlabClaims(clk.Now()), map[string]any{"iss": srv.URL}))); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("smaller MaxTokenBytes", func(t *testing.T) {
		clk := newClock()
		k := newRSAKey(t, "kid-1")
		srv := newJWKSServer(t, k)
		v := newTestVerifier(t, srv, clk, func(c *Config) { c.MaxTokenBytes = 100 })
		_, err := v.Verify(t.Context(), mint(t, k, nil, gitlabClaims(clk.Now())))
		if !errors.Is(err, ErrTooLarge) {
			t.Fatalf("Verify error %v; want ErrTooLarge", err)
		}
	})
}

func FuzzVerify(f *testing.F) {
	clk := newClock()
	k := newRSAKey(f, "kid-1")
	srv := newJWKSServer(f, k)
	v := newTestVerifier(f, srv, clk)
	valid := mint(f, k, nil, gitlabClaims(clk.Now()))
	f.Add(valid)
	f.Add(mint(f, k, map[string]any{"crit": []string{"b64"}}, gitlabClaims(clk.Now())))
	f.Add("")
	f.Add("..")
	f.Add("e30.e30.e30")
	f.Add(b64([]byte(`{"alg":"RS256","kid":"kid-1"}`)) + "." + b64([]byte(`{"exp":1e999,"aud":[null]}`)) + ".AA")
	f.Fuzz(func(t *testing.T, raw string) {
		tok, err := v.Verify(t.Context(), raw)
		if err == nil && (tok == nil || tok.KeyID != "kid-1") {
			t.Fatalf("Verify(%q) returned %+v without error", raw, tok)
		}
		if err != nil && tok != nil {
			t.Fatalf("Verify(%q) returned a token and an error", raw)
		}
	})
}

// BenchmarkVerify is the full check of a token never seen (the cache off).
func BenchmarkVerify(b *testing.B) {
	clk := newClock()
	k := newRSAKey(b, "kid-1")
	srv := newJWKSServer(b, k)
	v := newTestVerifier(b, srv, clk, func(c *Config) { c.CacheSize = -1 })
	tok := mint(b, k, nil, gitlabClaims(clk.Now()))
	ctx := b.Context()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := v.Verify(ctx, tok); err != nil {
			b.Fatal(err)
		}
	}
}

func TestParseClaimsMatchesVerify(t *testing.T) {
	c, err := ParseClaims([]byte(`{"project_path":"platform/app","runner_id":12,"ref_protected":"true","user_login":null}`))
	if err != nil {
		t.Fatal(err)
	}
	if c["project_path"] != "platform/app" || c["runner_id"] != "12" || c["ref_protected"] != "true" {
		t.Fatalf("claims = %v", c)
	}
	if _, ok := c["user_login"]; ok {
		t.Fatal("a null claim was kept")
	}
	for _, bad := range []string{`{"ref_protected":true}`, `{"project_id":7}`, `{"runner_id":"12"}`, `[]`} {
		if _, err := ParseClaims([]byte(bad)); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: err = %v, want ErrMalformed", bad, err)
		}
	}
}
