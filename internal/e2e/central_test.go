package e2e

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"net/url"

	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"github.com/jackc/pgx/v5"

	"gltoken.dev/gltoken/internal/gitlabfake"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestCentralModeTLSAndPostgres runs two exchanged replicas on TCP with TLS,
// sharing one PostgreSQL ledger. git reaches them through
// git-credential-gltoken over https with GLTOKEN_CA_FILE. One replica is
// killed; the other's reaper still revokes what the dead one minted.
func TestCentralModeTLSAndPostgres(t *testing.T) {
	dsn := postgresDSN(t)
	w := newWorld(t)
	pki := newPKI(t, w.dir)
	var replicas []*daemon
	for i := range 2 {
		replicas = append(replicas, w.startDaemon(t, daemonOpts{
			name:   fmt.Sprintf("replica%d", i),
			listen: fmt.Sprintf("tcp://127.0.0.1:%d", freePort(t)),
			caFile: pki.caFile,
			extra:  fmt.Sprintf("tls: {cert_file: %s, key_file: %s}\n", pki.serverCert, pki.serverKey),
			store:  fmt.Sprintf("{driver: postgres, dsn: %q}", dsn),
		}))
	}
	// Each replica serves a clone; both credentials land in the one ledger.
	for i, d := range replicas {
		g := w.git(t, d, w.job("short-lived", false), "GLTOKEN_CA_FILE="+pki.caFile)
		g.mustRun("", "clone", w.gl.URL()+"/platform/lib.git", fmt.Sprintf("lib%d", i))
	}
	if n := len(w.liveMinted()); n != 2 {
		t.Fatalf("live = %d, want 2", n)
	}
	shortLived := map[string]bool{}
	for _, tok := range w.liveMinted() {
		shortLived[tok.Name] = true
	}
	// Without the CA the helper does not trust the daemon, and says so.
	g := w.git(t, replicas[1], w.job("main", true))
	out, err := g.run("", "clone", w.gl.URL()+"/platform/lib.git")
	if err == nil || !strings.Contains(out, "certificate") {
		t.Fatalf("clone through an untrusted daemon: err=%v\n%s", err, out)
	}
	// A credential revoked through one replica is not handed out again from
	// the other's cache.
	job := w.job("main", true)
	first := tokenOf(t, replicas[0], job, w.gl.URL()+"/platform/lib.git")
	if again := tokenOf(t, replicas[0], job, w.gl.URL()+"/platform/lib.git"); again != first {
		t.Fatal("the same request got a second credential")
	}
	resp, err := replicas[1].httpClient().PostForm(replicas[1].base()+"/v1/revoke", url.Values{"token": {first}})
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("revoke through replica 1: %v %v", resp, err)
	}
	resp.Body.Close()
	if again := tokenOf(t, replicas[0], job, w.gl.URL()+"/platform/lib.git"); again == first {
		t.Fatal("replica 0 handed out a credential revoked through replica 1")
	}
	// Replica 0 dies; replica 1's reaper revokes the short-lived credentials at their TTL.
	replicas[0].kill()
	deadline := time.Now().Add(12*time.Second + time.Second + 10*time.Second)
	for countNamed(w.liveMinted(), shortLived) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("credentials outlived their TTL with one replica left:\n%s", replicas[1].logs.String())
		}
		time.Sleep(200 * time.Millisecond)
	}
	// The helper refuses to send the ID token over plain http off loopback.
	gp := w.git(t, replicas[1], w.job("main", true), "GLTOKEN_DAEMON=http://gltoken.example.com:8638")
	out, err = gp.run("", "clone", w.gl.URL()+"/platform/lib.git")
	if err == nil || !strings.Contains(out, "plain http") {
		t.Fatalf("plain-http daemon: err=%v\n%s", err, out)
	}
	assertNoSecrets(t, "clone output", out)
}

// postgresDSN returns the test database, or skips, except in CI, where a
// missing database fails the run rather than silently skipping.
func postgresDSN(t *testing.T) string {
	t.Helper()
	dsn := os.Getenv("GLTOKEN_TEST_POSTGRES_DSN")
	if dsn == "" {
		if os.Getenv("CI") != "" {
			t.Fatal("GLTOKEN_TEST_POSTGRES_DSN is not set; .ci/run must start PostgreSQL (internal/postgres/testdb.sh)")
		}
		t.Skip("GLTOKEN_TEST_POSTGRES_DSN not set: run `export GLTOKEN_TEST_POSTGRES_DSN=$(bash internal/postgres/testdb.sh)` to include the central-mode test")
	}
	return freshDatabase(t, dsn)
}

func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

type pki struct {
	caFile, serverCert, serverKey string
}

// newPKI writes a CA and a server certificate for 127.0.0.1 into dir.
func newPKI(t *testing.T, dir string) pki {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "gltoken test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "exchanged"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"localhost"},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalECPrivateKey(key)
	p := pki{caFile: filepath.Join(dir, "ca.pem"), serverCert: filepath.Join(dir, "server.pem"), serverKey: filepath.Join(dir, "server.key")}
	writeFile(t, p.caFile, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})), 0o644)
	writeFile(t, p.serverCert, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})), 0o644)
	writeFile(t, p.serverKey, string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})), 0o600)
	return p
}

// freshDatabase creates an empty database for t on the server of dsn and
// returns its DSN; it is dropped when t ends.
func freshDatabase(t *testing.T, dsn string) string {
	t.Helper()
	ctx := context.Background()
	admin, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("connect to the test PostgreSQL: %v", err)
	}
	var b [6]byte
	_, _ = rand.Read(b[:])
	name := "gltoken_e2e_" + hex.EncodeToString(b[:])
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		admin.Close(ctx)
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, err := admin.Exec(ctx, "DROP DATABASE "+name+" WITH (FORCE)"); err != nil {
			t.Errorf("drop %s: %v", name, err)
		}
		admin.Close(ctx)
	})
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	u.Path = "/" + name
	return u.String()
}

// tokenOf exchanges through d and returns the credential's secret.
func tokenOf(t *testing.T, d *daemon, idToken, resource string) string {
	t.Helper()
	resp, body := d.exchange(idToken, resource, "read_repository")
	if resp.StatusCode != 200 {
		t.Fatalf("exchange: %d %s", resp.StatusCode, body)
	}
	var tr struct {
		AccessToken string `json:"access_token"`
	}
	if err := json.Unmarshal([]byte(body), &tr); err != nil || tr.AccessToken == "" {
		t.Fatalf("exchange answer: %v", err)
	}
	return tr.AccessToken
}

func countNamed(toks []gitlabfake.TokenState, names map[string]bool) int {
	n := 0
	for _, tok := range toks {
		if names[tok.Name] {
			n++
		}
	}
	return n
}
