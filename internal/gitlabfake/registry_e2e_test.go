package gitlabfake

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	gitlab "gitlab.com/gitlab-org/api/client-go"
)

// TestRealRegistryAcceptsRegistryToken runs Debian's docker-registry (distribution 2.8) with
// token auth against the stand-in: the registry must accept the JWT (libtrust kid of a bundled
// certificate) for pull and refuse push with a read_registry deploy token. It needs the
// docker-registry binary (apt-get install docker-registry) and says so when it is missing.
func TestRealRegistryAcceptsRegistryToken(t *testing.T) {
	t.Parallel()
	bin, err := exec.LookPath("docker-registry")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("docker-registry is not installed: .ci/run must install it (apt-get install docker-registry)")
		}
		t.Skip("docker-registry is not installed (apt-get install docker-registry); the real-registry check did not run")
	}
	s := Start(t, Options{}) // real clock: the registry checks exp/nbf against its own
	svc := s.AddUser("svc")
	s.AddProject("platform/app")
	s.AddMember(svc, "platform/app", Maintainer)
	c := newClient(t, s, s.CreatePersonalAccessToken(svc, "svc", []string{"api"}, nil))
	dt, _, err := c.DeployTokens.CreateProjectDeployToken("platform/app", &gitlab.CreateProjectDeployTokenOptions{
		Name: gitlab.Ptr("reg"), Scopes: &[]string{"read_registry"},
	})
	if err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	certFile := filepath.Join(dir, "gitlab-registry.crt")
	if err := os.WriteFile(certFile, s.RegistryCertPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	cfg := fmt.Sprintf(`version: 0.1
log: {level: error}
storage: {filesystem: {rootdirectory: %s}}
http: {addr: %s}
auth:
  token:
    realm: %s/jwt/auth
    service: container_registry
    issuer: %s
    rootcertbundle: %s
`, filepath.Join(dir, "data"), addr, s.URL(), s.RegistryIssuer(), certFile)
	cfgFile := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin, "serve", cfgFile)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); _ = cmd.Wait() })
	base := "http://" + addr
	var first *http.Response
	for i := 0; ; i++ {
		first, err = http.Get(base + "/v2/platform/app/tags/list")
		if err == nil {
			break
		}
		if i > 500 {
			t.Fatalf("registry did not come up: %v\n%s", err, stderr.String())
		}
		time.Sleep(10 * time.Millisecond) // polling for start-up, not a timing assertion
	}
	first.Body.Close()
	challenge := first.Header.Get("WWW-Authenticate")
	if first.StatusCode != 401 || !strings.HasPrefix(challenge, "Bearer ") {
		t.Fatalf("registry challenge: %d %q", first.StatusCode, challenge)
	}
	scope := regexp.MustCompile(`scope="([^"]+)"`).FindStringSubmatch(challenge)
	if scope == nil {
		t.Fatalf("no scope in %q", challenge)
	}

	token := func(scope string) string {
		req, _ := http.NewRequest("GET", s.URL()+"/jwt/auth?service=container_registry&scope="+scope, nil)
		req.SetBasicAuth(dt.Username, dt.Token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var body struct{ Token string }
		if err := jsonDecode(resp, &body); err != nil || body.Token == "" {
			t.Fatalf("token: %d %v", resp.StatusCode, err)
		}
		return body.Token
	}
	req, _ := http.NewRequest("GET", base+"/v2/platform/app/tags/list", nil)
	req.Header.Set("Authorization", "Bearer "+token(scope[1]))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	// 404 NAME_UNKNOWN: authenticated and authorised, the repository is just empty.
	if resp.StatusCode != 404 {
		t.Fatalf("pull with the stand-in's token: %d %q\n%s", resp.StatusCode, resp.Header.Get("WWW-Authenticate"), stderr.String())
	}

	req, _ = http.NewRequest("POST", base+"/v2/platform/app/blobs/uploads/", nil)
	req.Header.Set("Authorization", "Bearer "+token("repository:platform/app:pull,push"))
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 401 || !strings.Contains(resp.Header.Get("WWW-Authenticate"), "insufficient_scope") {
		t.Fatalf("push with a read_registry token: %d %q", resp.StatusCode, resp.Header.Get("WWW-Authenticate"))
	}
}
