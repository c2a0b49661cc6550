package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net/http"
	neturl "net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestRunWritesStateAndServes(t *testing.T) {
	dir := t.TempDir()
	listen := filepath.Join(dir, "listen")
	ctx, cancel := context.WithCancel(context.Background())
	var stdout, stderr bytes.Buffer
	done := make(chan int)
	go func() {
		done <- run(ctx, []string{"--state-dir", dir, "--listen-file", listen, "--project", "platform/app", "--group", "platform", "--user", "alice", "--service-user", "svc"}, nil, &stdout, &stderr)
	}()
	// The listen file is written last; wait for the process to get there or exit.
	var url string
	for url == "" {
		select {
		case code := <-done:
			t.Fatalf("run exited early with %d: %s", code, stderr.String())
		default:
		}
		if b, err := os.ReadFile(listen); err == nil {
			url = strings.TrimSpace(string(b))
		} else {
			time.Sleep(10 * time.Millisecond) // polling, not a timing assertion
		}
	}
	tok, err := os.ReadFile(filepath.Join(dir, "service-token"))
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, "service-token"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("service-token mode %v, %v", fi.Mode(), err)
	}
	req, _ := http.NewRequest("GET", url+"/api/v4/projects/platform%2Fapp", nil)
	req.Header.Set("PRIVATE-TOKEN", strings.TrimSpace(string(tok)))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("service token on its project: %d", resp.StatusCode)
	}
	resp, err = http.Get(url + "/-/standin/id_token?project=platform/app&aud=x&user=alice")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || strings.Count(string(body), ".") != 2 {
		t.Fatalf("id_token: %d %q", resp.StatusCode, body)
	}

	// A project created while the stand-in runs is at once a project the
	// service user maintains, with an ID token to match.
	resp, err = http.PostForm(url+"/-/standin/projects", neturl.Values{"path": {"team/new-app"}, "maintainer": {"svc"}, "developer": {"bob"}})
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 201 || !strings.Contains(string(body), `"path_with_namespace":"team/new-app"`) {
		t.Fatalf("create project: %d %s", resp.StatusCode, body)
	}
	req, _ = http.NewRequest("GET", url+"/api/v4/projects/team%2Fnew-app", nil)
	req.Header.Set("PRIVATE-TOKEN", strings.TrimSpace(string(tok)))
	if resp, err = http.DefaultClient.Do(req); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("service token on the new project: %d", resp.StatusCode)
	}
	if resp, err = http.Get(url + "/-/standin/id_token?project=team/new-app&aud=x&user=bob"); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("id_token for the new project: %d", resp.StatusCode)
	}
	resp, err = http.PostForm(url+"/-/standin/projects", neturl.Values{"path": {"../etc"}})
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 400 {
		t.Fatalf("a bad path: %d %s", resp.StatusCode, body)
	}
	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
}

func TestRunNeedsStateDir(t *testing.T) {
	var stderr bytes.Buffer
	if code := run(context.Background(), nil, nil, io.Discard, &stderr); code != 2 {
		t.Fatalf("exit %d", code)
	}
	if !strings.Contains(stderr.String(), "--state-dir is required") {
		t.Fatalf("stderr %q", stderr.String())
	}
}

// TestRunHost: with --host the stand-in is GitLab at https://HOST, reached
// through the proxy it writes, trusting the CA it writes; go's discovery
// request gets GitLab's go-import answer.
func TestRunHost(t *testing.T) {
	dir := t.TempDir()
	listen := filepath.Join(dir, "listen")
	ctx, cancel := context.WithCancel(context.Background())
	var stdout, stderr bytes.Buffer
	done := make(chan int)
	go func() {
		done <- run(ctx, []string{"--state-dir", dir, "--listen-file", listen, "--project", "platform/app", "--host", "gitlab.example.com"}, nil, &stdout, &stderr)
	}()
	var url string
	for url == "" {
		select {
		case code := <-done:
			t.Fatalf("run exited early with %d: %s", code, stderr.String())
		default:
		}
		if b, err := os.ReadFile(listen); err == nil {
			url = strings.TrimSpace(string(b))
		} else {
			time.Sleep(10 * time.Millisecond) // polling, not a timing assertion
		}
	}
	if url != "https://gitlab.example.com" {
		t.Fatalf("url %q", url)
	}
	ca, err := os.ReadFile(filepath.Join(dir, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	proxy, err := os.ReadFile(filepath.Join(dir, "proxy"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		t.Fatal("ca.pem holds no certificate")
	}
	pu, err := neturl.Parse(strings.TrimSpace(string(proxy)))
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(pu), TLSClientConfig: &tls.Config{RootCAs: pool}}}
	resp, err := hc.Get(url + "/platform/app/pkg?go-get=1")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), `<meta name="go-import" content="gitlab.example.com/platform/app git https://gitlab.example.com/platform/app.git">`) {
		t.Fatalf("go-get: %d %s", resp.StatusCode, body)
	}
	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
}
