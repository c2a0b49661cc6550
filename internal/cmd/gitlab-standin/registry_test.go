package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

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

// startStandin runs the command in-process with args and returns its state directory and URL.
func startStandin(t *testing.T, args ...string) (dir, url string) {
	t.Helper()
	dir = t.TempDir()
	listen := filepath.Join(dir, "listen")
	ctx, cancel := context.WithCancel(context.Background())
	var stderr bytes.Buffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, append([]string{"--state-dir", dir, "--listen-file", listen}, args...), nil, &bytes.Buffer{}, &stderr)
	}()
	t.Cleanup(func() { cancel(); <-done })
	for url == "" {
		select {
		case code := <-done:
			done <- code
			t.Fatalf("run exited early with %d: %s", code, stderr.String())
		default:
		}
		if b, err := os.ReadFile(listen); err == nil {
			url = strings.TrimSpace(string(b))
		} else {
			time.Sleep(10 * time.Millisecond) // polling, not a timing assertion
		}
	}
	return dir, url
}

// readmeRegistryConfig is the docker-registry configuration the README shows for trying the
// registry by hand, for a stand-in in dir at url and a registry on addr.
func readmeRegistryConfig(t *testing.T, dir, url, addr string) string {
	t.Helper()
	b, err := os.ReadFile("../../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(b), "cat > /tmp/gl/registry.yml <<EOF\n")
	if !ok {
		t.Fatal("README shows no registry configuration for the stand-in")
	}
	cfg, _, ok := strings.Cut(rest, "\nEOF\n")
	if !ok {
		t.Fatal("README's registry configuration has no end")
	}
	cfg = strings.ReplaceAll(cfg, "$(cat /tmp/gl/url)", url)
	cfg = strings.ReplaceAll(cfg, "127.0.0.1:5000", addr)
	return strings.ReplaceAll(cfg, "/tmp/gl", dir) + "\nlog: {level: warn}\n"
}

// TestRegistryByHand: with --tls the stand-in serves https and writes its CA, its server
// certificate and the registry-token certificate. A real docker-registry, configured as the
// README shows, takes the stand-in's tokens from the https realm; the real skopeo, trusting
// only the written CA (--cert-dir DIR/certs), pushes an image with the service token and
// pulls it.
func TestRegistryByHand(t *testing.T) {
	registryBin := needTool(t, "docker-registry", "docker-registry")
	if code := run(context.Background(), []string{"--state-dir", t.TempDir(), "--tls", "--host", "gitlab.example.com"}, nil, &bytes.Buffer{}, &bytes.Buffer{}); code != 2 {
		t.Fatalf("--tls with --host: exit %d, want 2", code)
	}
	skopeo := needTool(t, "skopeo", "skopeo")
	dir, url := startStandin(t, "--tls", "--project", "platform/app")
	if !strings.HasPrefix(url, "https://127.0.0.1:") {
		t.Fatalf("url %q, want https", url)
	}
	for name, mode := range map[string]os.FileMode{"ca.pem": 0o644, "certs/ca.crt": 0o644, "tls-cert.pem": 0o644, "tls-key.pem": 0o600, "registry-token.pem": 0o644, "service-token": 0o600} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil || fi.Mode().Perm() != mode {
			t.Fatalf("%s: %v, %v; want mode %v", name, fi, err, mode)
		}
	}
	caPEM, _ := os.ReadFile(filepath.Join(dir, "ca.pem"))
	if again, _ := os.ReadFile(filepath.Join(dir, "certs", "ca.crt")); !bytes.Equal(again, caPEM) {
		t.Fatal("certs/ca.crt is not ca.pem")
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		t.Fatal("ca.pem holds no certificate")
	}
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	pat, _ := os.ReadFile(filepath.Join(dir, "service-token"))
	req, _ := http.NewRequest("GET", url+"/api/v4/projects/platform%2Fapp", nil)
	req.Header.Set("PRIVATE-TOKEN", strings.TrimSpace(string(pat)))
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("https with the written CA: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("project over https: %d", resp.StatusCode)
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	cfgFile := filepath.Join(dir, "registry.yml")
	if err := os.WriteFile(cfgFile, []byte(readmeRegistryConfig(t, dir, url, addr)), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(registryBin, "serve", cfgFile)
	var logs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	var challenge string
	for i := 0; challenge == ""; i++ {
		if resp, err := hc.Get("https://" + addr + "/v2/"); err == nil {
			resp.Body.Close()
			challenge = resp.Header.Get("WWW-Authenticate")
		} else if i > 500 {
			t.Fatalf("the registry did not come up: %v", err)
		} else {
			time.Sleep(10 * time.Millisecond) // polling for start-up, not a timing assertion
		}
	}
	if want := `Bearer realm="` + url + `/jwt/auth",service="container_registry"`; challenge != want {
		t.Fatalf("challenge %q, want %q", challenge, want)
	}

	image := ociImage(t)
	creds := "gltoken-service:" + strings.TrimSpace(string(pat))
	env := append(os.Environ(), "HOME="+t.TempDir(), "XDG_RUNTIME_DIR="+t.TempDir(), "REGISTRY_AUTH_FILE=")
	skopeoRun := func(args ...string) {
		t.Helper()
		c := exec.Command(skopeo, args...)
		c.Env = env
		if out, err := c.CombinedOutput(); err != nil {
			t.Fatalf("skopeo %s: %v\n%s\nregistry:\n%s", strings.Join(args, " "), err, out, logs.String())
		}
	}
	certs := filepath.Join(dir, "certs")
	skopeoRun("copy", "--dest-cert-dir", certs, "--dest-creds", creds, "oci:"+image+":v1", "docker://"+addr+"/platform/app:v1")
	dest := filepath.Join(t.TempDir(), "pulled")
	skopeoRun("copy", "--src-cert-dir", certs, "--src-creds", creds, "docker://"+addr+"/platform/app:v1", "dir:"+dest)
	if _, err := os.Stat(filepath.Join(dest, "manifest.json")); err != nil {
		t.Fatalf("pulled image has no manifest: %v", err)
	}
}

// TestRunWithoutTLSRemovesAnEarlierCA: a plain http run in a state directory an earlier --tls
// run used leaves no CA behind that a client could trust for it, and writes the registry-token
// certificate as always.
func TestRunWithoutTLSRemovesAnEarlierCA(t *testing.T) {
	dir, url := startStandin(t, "--tls")
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // serve nothing: only the files matter
	if code := run(ctx, []string{"--state-dir", dir}, nil, &bytes.Buffer{}, &bytes.Buffer{}); code != 0 {
		t.Fatalf("exit %d", code)
	}
	for _, name := range []string{"ca.pem", "certs/ca.crt", "tls-cert.pem", "tls-key.pem"} {
		if _, err := os.Stat(filepath.Join(dir, name)); !os.IsNotExist(err) {
			t.Errorf("%s is still there after a run without --tls (%v)", name, err)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "url")); strings.TrimSpace(string(b)) == url || !strings.HasPrefix(string(b), "http://") {
		t.Errorf("url after the plain run: %q", b)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "registry-token.pem")); err != nil || !bytes.HasPrefix(b, []byte("-----BEGIN CERTIFICATE-----")) {
		t.Errorf("registry-token.pem: %v %q", err, b)
	}
}

// ociImage writes a one-layer OCI image layout (tag v1) and returns its directory.
func ociImage(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	blobs := filepath.Join(dir, "blobs", "sha256")
	if err := os.MkdirAll(blobs, 0o755); err != nil {
		t.Fatal(err)
	}
	put := func(b []byte) map[string]any {
		sum := sha256.Sum256(b)
		if err := os.WriteFile(filepath.Join(blobs, hex.EncodeToString(sum[:])), b, 0o644); err != nil {
			t.Fatal(err)
		}
		return map[string]any{"digest": "sha256:" + hex.EncodeToString(sum[:]), "size": len(b)}
	}
	var layer bytes.Buffer
	tw := tar.NewWriter(&layer)
	content := []byte("tried by hand\n")
	_ = tw.WriteHeader(&tar.Header{Name: "hello.txt", Mode: 0o644, Size: int64(len(content)), ModTime: time.Unix(0, 0)})
	_, _ = tw.Write(content)
	_ = tw.Close()
	diff := sha256.Sum256(layer.Bytes())
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	_, _ = zw.Write(layer.Bytes())
	_ = zw.Close()
	desc := func(mediaType string, d map[string]any) map[string]any { d["mediaType"] = mediaType; return d }
	config, _ := json.Marshal(map[string]any{"architecture": "amd64", "os": "linux",
		"rootfs": map[string]any{"type": "layers", "diff_ids": []string{"sha256:" + hex.EncodeToString(diff[:])}}})
	manifest, _ := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
		"config": desc("application/vnd.oci.image.config.v1+json", put(config)),
		"layers": []any{desc("application/vnd.oci.image.layer.v1.tar+gzip", put(gz.Bytes()))}})
	m := desc("application/vnd.oci.image.manifest.v1+json", put(manifest))
	m["annotations"] = map[string]string{"org.opencontainers.image.ref.name": "v1"}
	index, _ := json.Marshal(map[string]any{"schemaVersion": 2, "manifests": []any{m}})
	for name, b := range map[string][]byte{"index.json": index, "oci-layout": []byte(`{"imageLayoutVersion":"1.0.0"}`)} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}
