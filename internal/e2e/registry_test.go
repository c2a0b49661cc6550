package e2e

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"gltoken.dev/gltoken/internal/gitlabfake"
	"gltoken.dev/gltoken/internal/syncbuf"
)

// registry is Debian's docker-registry (distribution 2.8) serving https on
// loopback with token auth against the stand-in's /jwt/auth.
type registry struct {
	host    string // 127.0.0.1:port
	certDir string // holds ca.crt, for skopeo's --*-cert-dir
}

func needTool(t *testing.T, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s is not installed: .ci/run must install %s", name, pkg)
		}
		t.Skipf("%s is not installed (apt-get install %s); the registry test did not run", name, pkg)
	}
	return p
}

func startRegistry(t *testing.T, w *world, p pki) *registry {
	t.Helper()
	bin := needTool(t, "docker-registry", "docker-registry")
	dir := t.TempDir()
	bundle := filepath.Join(dir, "gitlab-registry.crt")
	writeFile(t, bundle, string(w.gl.RegistryCertPEM()), 0o644)
	r := &registry{host: fmt.Sprintf("127.0.0.1:%d", freePort(t)), certDir: filepath.Join(dir, "certs")}
	if err := os.MkdirAll(r.certDir, 0o755); err != nil {
		t.Fatal(err)
	}
	ca, _ := os.ReadFile(p.caFile)
	writeFile(t, filepath.Join(r.certDir, "ca.crt"), string(ca), 0o644)
	cfg := fmt.Sprintf(`version: 0.1
log: {level: warn}
storage: {filesystem: {rootdirectory: %s}, delete: {enabled: true}}
http:
  addr: %s
  tls: {certificate: %s, key: %s}
auth:
  token:
    realm: %s/jwt/auth
    service: container_registry
    issuer: %s
    rootcertbundle: %s
`, filepath.Join(dir, "data"), r.host, p.serverCert, p.serverKey, w.gl.URL(), w.gl.RegistryIssuer(), bundle)
	cfgFile := filepath.Join(dir, "config.yml")
	writeFile(t, cfgFile, cfg, 0o644)
	cmd := exec.Command(bin, "serve", cfgFile)
	logs := &syncbuf.Buffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	hc := (&daemon{t: t, caFile: p.caFile}).httpClient()
	waitFor(t, "the registry", func() bool {
		resp, err := hc.Get("https://" + r.host + "/v2/")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusUnauthorized
	})
	return r
}

// TestRegistryLoginThroughDockerHelper: skopeo pulls an image through
// docker-credential-gltoken (named in credHelpers), with a read_registry
// deploy token minted for the job, and is refused a push.
func TestRegistryLoginThroughDockerHelper(t *testing.T) {
	skopeo := needTool(t, "skopeo", "skopeo")
	w := newWorld(t)
	p := newPKI(t, w.dir)
	reg := startRegistry(t, w, p)
	d := w.startDaemon(t, daemonOpts{registryURL: "https://" + reg.host})

	// A maintainer pushes the image the job will pull.
	image := ociImage(t)
	run := func(env []string, args ...string) (string, error) {
		cmd := exec.Command(skopeo, args...)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	base := append(os.Environ(), "HOME="+t.TempDir(), "XDG_RUNTIME_DIR="+t.TempDir(), "REGISTRY_AUTH_FILE=")
	if out, err := run(base, "copy", "--dest-cert-dir", reg.certDir, "--dest-creds", "gltoken-bot:"+w.botToken,
		"oci:"+image+":v1", "docker://"+reg.host+"/platform/lib:v1"); err != nil {
		t.Fatalf("seed the registry: %v\n%s", err, out)
	}

	// The job: credHelpers names gltoken for the registry host.
	home := t.TempDir()
	if err := os.MkdirAll(filepath.Join(home, ".docker"), 0o700); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(home, ".docker", "config.json"), fmt.Sprintf(`{"credHelpers": {%q: "gltoken"}}`, reg.host), 0o600)
	job := append(os.Environ(), "HOME="+home, "XDG_RUNTIME_DIR="+t.TempDir(), "REGISTRY_AUTH_FILE=",
		"PATH="+binDir+string(os.PathListSeparator)+os.Getenv("PATH"),
		"GLTOKEN_ID_TOKEN="+w.job("main", true), "GLTOKEN_DAEMON="+d.daemonURL(),
		"GLTOKEN_REGISTRY_PROJECT=platform/lib")
	dest := filepath.Join(t.TempDir(), "pulled")
	if out, err := run(job, "copy", "--src-cert-dir", reg.certDir, "docker://"+reg.host+"/platform/lib:v1", "dir:"+dest); err != nil {
		t.Fatalf("pull through docker-credential-gltoken: %v\n%s\ndaemon:\n%s", err, out, d.logs.String())
	}
	if _, err := os.Stat(filepath.Join(dest, "manifest.json")); err != nil {
		t.Fatalf("pulled image has no manifest: %v", err)
	}
	var dt []string
	for _, tok := range w.liveMinted() {
		if tok.OwnerPath == "platform/lib" {
			dt = append(dt, tok.Kind+" "+strings.Join(tok.Scopes, ","))
		}
	}
	if len(dt) != 1 || dt[0] != gitlabfake.KindDeployProject+" read_registry" {
		t.Fatalf("minted %v, want one read_registry project deploy token", dt)
	}

	// A push needs write_registry, which the helper does not ask for by
	// default and the registry therefore refuses.
	out, err := run(job, "copy", "--dest-cert-dir", reg.certDir, "dir:"+dest, "docker://"+reg.host+"/platform/lib:v2")
	if err == nil {
		t.Fatalf("push with a read_registry credential succeeded:\n%s", out)
	}
	if !strings.Contains(out, "denied") && !strings.Contains(out, "unauthorized") {
		t.Fatalf("push refused for another reason:\n%s", out)
	}
	t.Logf("push refused: %s", strings.TrimSpace(out))
	assertNoSecrets(t, "skopeo output", out)
	assertNoSecrets(t, "daemon log", d.logs.String())
}

// skopeoRun runs skopeo with env and returns its combined output.
func skopeoRun(t *testing.T, env []string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(needTool(t, "skopeo", "skopeo"), args...)
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// registryClientEnv is the environment of a registry client whose
// ~/.docker/config.json names gltoken as the credential helper of reg, with
// docker-credential-gltoken on PATH, and more variables after.
func registryClientEnv(t *testing.T, reg *registry, more ...string) []string {
	t.Helper()
	home := t.TempDir()
	if err := os.MkdirAll(filepath.Join(home, ".docker"), 0o700); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(home, ".docker", "config.json"), fmt.Sprintf(`{"credHelpers": {%q: "gltoken"}}`, reg.host), 0o600)
	env := append(os.Environ(), "HOME="+home, "XDG_RUNTIME_DIR="+t.TempDir(), "REGISTRY_AUTH_FILE=",
		"PATH="+binDir+string(os.PathListSeparator)+os.Getenv("PATH"))
	return append(env, more...)
}

// seedImages pushes the one-layer test image to each repository path of reg
// (tag v1) with the service account's token, as a maintainer would.
func (w *world) seedImages(t *testing.T, reg *registry, paths ...string) {
	t.Helper()
	image := ociImage(t)
	env := append(os.Environ(), "HOME="+t.TempDir(), "XDG_RUNTIME_DIR="+t.TempDir(), "REGISTRY_AUTH_FILE=")
	for _, p := range paths {
		if out, err := skopeoRun(t, env, "copy", "--dest-cert-dir", reg.certDir, "--dest-creds", "gltoken-bot:"+w.botToken,
			"oci:"+image+":v1", "docker://"+reg.host+"/"+p+":v1"); err != nil {
			t.Fatalf("seed %s: %v\n%s", p, err, out)
		}
	}
}

// shippedImagesJob returns contrib/policy.yaml and the GLTOKEN_REGISTRY_PROJECTS of
// contrib/gitlab-ci.yml's images-pull job.
func shippedImagesJob(t *testing.T) (policy, projects string) {
	t.Helper()
	pol, err := os.ReadFile("../../contrib/policy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	ci, err := os.ReadFile("../../contrib/gitlab-ci.yml")
	if err != nil {
		t.Fatal(err)
	}
	_, job, ok := strings.Cut(string(ci), "\nimages-pull:\n")
	if !ok {
		t.Fatal("contrib/gitlab-ci.yml has no images-pull job")
	}
	_, rest, ok := strings.Cut(job, "GLTOKEN_REGISTRY_PROJECTS: ")
	if !ok {
		t.Fatal("contrib/gitlab-ci.yml's images-pull job sets no GLTOKEN_REGISTRY_PROJECTS")
	}
	projects, _, _ = strings.Cut(rest, "\n")
	return string(pol), strings.TrimSpace(projects)
}

// TestRegistryImagesOfTwoProjectsInOneJob: contrib/gitlab-ci.yml's
// images-pull job under contrib/policy.yaml: one job pulls images of two
// projects with skopeo through docker-credential-gltoken. The login names
// only the registry host, so the job lists the projects in
// GLTOKEN_REGISTRY_PROJECTS; the rule grants their group, and one group
// deploy token serves both (and an image below a project). Projects that no
// single credential serves are refused: skopeo goes on anonymously and is
// refused, and the helper's line on stderr says why.
func TestRegistryImagesOfTwoProjectsInOneJob(t *testing.T) {
	w := newWorld(t)
	p := newPKI(t, w.dir)
	reg := startRegistry(t, w, p)
	pol, projects := shippedImagesJob(t)
	if projects != "platform/tools/cli,platform/tools/lint" {
		t.Fatalf("contrib/gitlab-ci.yml's images-pull job names %q: update this test", projects)
	}
	d := w.startDaemon(t, daemonOpts{registryURL: "https://" + reg.host, policy: pol})
	w.seedImages(t, reg, "platform/tools/cli", "platform/tools/lint", "platform/tools/cli/builder", "platform/lib")

	idToken := w.job("main", true)
	job := registryClientEnv(t, reg, "GLTOKEN_ID_TOKEN="+idToken, "GLTOKEN_DAEMON="+d.daemonURL(),
		"GLTOKEN_REGISTRY_PROJECTS="+projects)
	for _, image := range []string{"platform/tools/cli", "platform/tools/lint", "platform/tools/cli/builder"} {
		dest := filepath.Join(t.TempDir(), "pulled")
		if out, err := skopeoRun(t, job, "copy", "--src-cert-dir", reg.certDir, "docker://"+reg.host+"/"+image+":v1", "dir:"+dest); err != nil {
			t.Fatalf("pull %s: %v\n%s\ndaemon:\n%s", image, err, out, d.logs.String())
		}
		if _, err := os.Stat(filepath.Join(dest, "manifest.json")); err != nil {
			t.Fatalf("pulled %s has no manifest: %v", image, err)
		}
	}
	var minted []string
	for _, tok := range w.liveMinted() {
		minted = append(minted, tok.Kind+" "+tok.OwnerPath+" "+strings.Join(tok.Scopes, ","))
	}
	if len(minted) != 1 || minted[0] != gitlabfake.KindDeployGroup+" platform/tools read_registry" {
		t.Fatalf("minted %v, want one read_registry group deploy token on platform/tools", minted)
	}

	// platform/lib is granted too (rule app-reads-libs), but as a project deploy token:
	// no one credential serves it and platform/tools/cli. Nothing is minted.
	denied := registryClientEnv(t, reg, "GLTOKEN_ID_TOKEN="+idToken, "GLTOKEN_DAEMON="+d.daemonURL(),
		"GLTOKEN_REGISTRY_PROJECTS=platform/tools/cli,platform/lib")
	out, err := skopeoRun(t, denied, "copy", "--src-cert-dir", reg.certDir, "docker://"+reg.host+"/platform/lib:v1", "dir:"+filepath.Join(t.TempDir(), "x"))
	if err == nil {
		t.Fatalf("pulled with a login the daemon refused:\n%s", out)
	}
	want := "gltoken: registry login denied, going on anonymously: https://" + reg.host + " (platform/tools/cli, platform/lib): one credential cannot serve both platform/tools/cli and platform/lib: " +
		`the first would get a group_deploy_token on platform/tools (rule "platform-tools"), the second a project_deploy_token on platform/lib (rule "app-reads-libs")`
	if !strings.Contains(out, want) {
		t.Fatalf("skopeo's output does not say why the login was denied (want %q):\n%s", want, out)
	}
	if n := len(w.liveMinted()); n != 1 {
		t.Fatalf("%d live credentials after the refused login, want 1", n)
	}
	t.Logf("refused login, as skopeo printed it:\n%s", out)
	// Alone, platform/lib is served.
	alone := registryClientEnv(t, reg, "GLTOKEN_ID_TOKEN="+idToken, "GLTOKEN_DAEMON="+d.daemonURL(), "GLTOKEN_REGISTRY_PROJECT=platform/lib")
	if out, err := skopeoRun(t, alone, "copy", "--src-cert-dir", reg.certDir, "docker://"+reg.host+"/platform/lib:v1", "dir:"+filepath.Join(t.TempDir(), "x")); err != nil {
		t.Fatalf("pull platform/lib alone: %v\n%s", err, out)
	}
	assertNoSecrets(t, "skopeo output", out)
	assertNoSecrets(t, "daemon log", d.logs.String())
}

// TestRegistryRealmOverHTTPS: GitLab serves the registry's token realm over https. With the
// stand-in on https (its own CA), exchanged trusts it through gitlab.ca_file, and skopeo
// fetches the registry token from the https realm with the minted credential, trusting the
// stand-in's CA next to the registry's.
func TestRegistryRealmOverHTTPS(t *testing.T) {
	w := newWorldWith(t, gitlabfake.Options{TLS: true})
	if !strings.HasPrefix(w.gl.URL(), "https://") {
		t.Fatalf("stand-in URL %s", w.gl.URL())
	}
	p := newPKI(t, w.dir)
	reg := startRegistry(t, w, p)
	writeFile(t, filepath.Join(reg.certDir, "gitlab-ca.crt"), string(w.gl.CACertPEM()), 0o644)
	glCA := filepath.Join(w.dir, "gitlab-ca.pem")
	writeFile(t, glCA, string(w.gl.CACertPEM()), 0o644)
	d := w.startDaemon(t, daemonOpts{registryURL: "https://" + reg.host, gitlab: "  ca_file: " + glCA + "\n"})
	w.seedImages(t, reg, "platform/lib")

	job := registryClientEnv(t, reg, "GLTOKEN_ID_TOKEN="+w.job("main", true), "GLTOKEN_DAEMON="+d.daemonURL(), "GLTOKEN_REGISTRY_PROJECT=platform/lib")
	dest := filepath.Join(t.TempDir(), "pulled")
	if out, err := skopeoRun(t, job, "copy", "--src-cert-dir", reg.certDir, "docker://"+reg.host+"/platform/lib:v1", "dir:"+dest); err != nil {
		t.Fatalf("pull with the realm on https: %v\n%s\ndaemon:\n%s", err, out, d.logs.String())
	}
	// Without the stand-in's CA the realm's certificate is refused: the token came over https.
	if err := os.Remove(filepath.Join(reg.certDir, "gitlab-ca.crt")); err != nil {
		t.Fatal(err)
	}
	out, err := skopeoRun(t, job, "copy", "--src-cert-dir", reg.certDir, "docker://"+reg.host+"/platform/lib:v1", "dir:"+filepath.Join(t.TempDir(), "x"))
	if err == nil || !strings.Contains(out, "certificate") {
		t.Fatalf("pulled without trusting the realm's CA (err %v):\n%s", err, out)
	}
}

// ociImage writes a one-layer OCI image layout and returns its directory.
func ociImage(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	blobs := filepath.Join(dir, "blobs", "sha256")
	if err := os.MkdirAll(blobs, 0o755); err != nil {
		t.Fatal(err)
	}
	put := func(b []byte) (string, int) {
		sum := sha256.Sum256(b)
		h := hex.EncodeToString(sum[:])
		writeFile(t, filepath.Join(blobs, h), string(b), 0o644)
		return "sha256:" + h, len(b)
	}
	var tarBuf bytes.Buffer
	tw := tar.NewWriter(&tarBuf)
	content := []byte("hello from platform/lib\n")
	_ = tw.WriteHeader(&tar.Header{Name: "hello.txt", Mode: 0o644, Size: int64(len(content)), ModTime: time.Unix(0, 0)})
	_, _ = tw.Write(content)
	_ = tw.Close()
	diffSum := sha256.Sum256(tarBuf.Bytes())
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	_, _ = zw.Write(tarBuf.Bytes())
	_ = zw.Close()
	layer, layerSize := put(gz.Bytes())
	config, _ := json.Marshal(map[string]any{
		"architecture": "amd64", "os": "linux",
		"rootfs": map[string]any{"type": "layers", "diff_ids": []string{"sha256:" + hex.EncodeToString(diffSum[:])}},
	})
	configDigest, configSize := put(config)
	manifest, _ := json.Marshal(map[string]any{
		"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
		"config": map[string]any{"mediaType": "application/vnd.oci.image.config.v1+json", "digest": configDigest, "size": configSize},
		"layers": []any{map[string]any{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer, "size": layerSize}},
	})
	manifestDigest, manifestSize := put(manifest)
	index, _ := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"manifests": []any{map[string]any{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifestDigest, "size": manifestSize,
			"annotations": map[string]string{"org.opencontainers.image.ref.name": "v1"}}},
	})
	writeFile(t, filepath.Join(dir, "index.json"), string(index), 0o644)
	writeFile(t, filepath.Join(dir, "oci-layout"), `{"imageLayoutVersion":"1.0.0"}`, 0o644)
	return dir
}
