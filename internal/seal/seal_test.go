package seal

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func newKey(tb testing.TB) string {
	tb.Helper()
	b := make([]byte, KeySize)
	if _, err := rand.Read(b); err != nil {
		tb.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(b)
}

func writeKeyFile(tb testing.TB, content string, mode os.FileMode) string {
	tb.Helper()
	path := filepath.Join(tb.TempDir(), "ledger.key")
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		tb.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil { // WriteFile's mode passes the umask
		tb.Fatal(err)
	}
	return path
}

func TestSealOpenRoundTrip(t *testing.T) {
	k, err := Load(writeKeyFile(t, "# ledger keys\n\nk2 "+newKey(t)+"\n  k1   "+newKey(t)+"  \n", 0o600))
	if err != nil {
		t.Fatal(err)
	}
	if k.SealingKey() != "k2" || strings.Join(k.KeyIDs(), " ") != "k2 k1" {
		t.Fatalf("sealing key %q, ids %q", k.SealingKey(), k.KeyIDs())
	}
	secret := []byte("glpat-0123456789abcdefghij")
	keyID, sealed, err := k.Seal("rec1", secret)
	if err != nil {
		t.Fatal(err)
	}
	if keyID != "k2" {
		t.Errorf("sealed under %q, want the first key k2", keyID)
	}
	if bytes.Contains(sealed, secret) {
		t.Error("the sealed secret contains the secret")
	}
	got, err := k.Open("rec1", keyID, sealed)
	if err != nil || !bytes.Equal(got, secret) {
		t.Fatalf("Open = %q, %v", got, err)
	}
	// Two seals of one secret differ (fresh nonce).
	_, again, _ := k.Seal("rec1", secret)
	if bytes.Equal(again, sealed) {
		t.Error("two seals are equal: the nonce is not fresh")
	}
}

func TestOpenRefuses(t *testing.T) {
	k1 := newKey(t)
	k, err := Parse([]byte("k1 " + k1 + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	_, sealed, err := k.Seal("rec1", []byte("gldt-secret"))
	if err != nil {
		t.Fatal(err)
	}
	flipped := bytes.Clone(sealed)
	flipped[len(flipped)-1] ^= 1
	// The same id under another key: what a replica with a different file sees.
	other, err := Parse([]byte("k1 " + newKey(t) + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		k      *Keyring
		record string
		keyID  string
		sealed []byte
		want   error
	}{
		{"another record (AAD)", k, "rec2", "k1", sealed, ErrOpen},
		{"altered", k, "rec1", "k1", flipped, ErrOpen},
		{"truncated", k, "rec1", "k1", sealed[:10], ErrOpen},
		{"empty", k, "rec1", "k1", nil, ErrOpen},
		{"unknown key id", k, "rec1", "k9", sealed, ErrUnknownKey},
		{"another key of that id", other, "rec1", "k1", sealed, ErrOpen},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got, err := tc.k.Open(tc.record, tc.keyID, tc.sealed); !errors.Is(err, tc.want) {
				t.Errorf("Open = %q, %v; want %v", got, err, tc.want)
			}
		})
	}
}

// TestRotation: the procedure the README describes. A key added below the
// current one opens nothing yet but is ready; moved to the top it seals;
// the old key still opens what it sealed until it is removed.
func TestRotation(t *testing.T) {
	old, next := newKey(t), newKey(t)
	before, _ := Parse([]byte("old " + old + "\n"))
	_, sealedOld, _ := before.Seal("r", []byte("s-old"))

	staged, _ := Parse([]byte("old " + old + "\nnew " + next + "\n"))
	if staged.SealingKey() != "old" {
		t.Fatalf("staged sealing key = %q", staged.SealingKey())
	}
	rotated, _ := Parse([]byte("new " + next + "\nold " + old + "\n"))
	keyID, sealedNew, _ := rotated.Seal("r", []byte("s-new"))
	if keyID != "new" {
		t.Fatalf("rotated sealing key = %q", keyID)
	}
	// A replica still on the staged file opens what the rotated one sealed.
	if got, err := staged.Open("r", keyID, sealedNew); err != nil || string(got) != "s-new" {
		t.Errorf("staged replica opens the new seal: %q, %v", got, err)
	}
	if got, err := rotated.Open("r", "old", sealedOld); err != nil || string(got) != "s-old" {
		t.Errorf("old seal after rotation: %q, %v", got, err)
	}
	done, _ := Parse([]byte("new " + next + "\n"))
	if _, err := done.Open("r", "old", sealedOld); !errors.Is(err, ErrUnknownKey) {
		t.Errorf("old seal after the old key left: %v, want ErrUnknownKey", err)
	}
}

func TestLoadRefuses(t *testing.T) {
	key := newKey(t)
	short := base64.StdEncoding.EncodeToString(make([]byte, 16))
	for _, tc := range []struct {
		name    string
		content string
		mode    os.FileMode
		want    string
	}{
		{"group readable", "k " + key + "\n", 0o640, "mode 0640"},
		{"world readable", "k " + key + "\n", 0o604, "mode 0604"},
		{"group writable", "k " + key + "\n", 0o620, "mode 0620"},
		{"empty", "", 0o600, "no key"},
		{"comments only", "# nothing\n\n", 0o600, "no key"},
		{"key without id", key + "\n", 0o600, "line 1"},
		{"three fields", "k " + key + " extra\n", 0o600, "line 1"},
		{"bad id", "k/1 " + key + "\n", 0o600, "line 1: key id"},
		{"duplicate id", "k " + key + "\nk " + newKey(t) + "\n", 0o600, "line 2: key id k appears twice"},
		{"short key", "# c\nk " + short + "\n", 0o600, "line 2: key k is not 32 bytes"},
		{"not base64", "k " + strings.Repeat("!", 44) + "\n", 0o600, "line 1: key k is not 32 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Load(writeKeyFile(t, tc.content, tc.mode))
			if err == nil {
				t.Fatal("Load accepted it")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Load: %v, want it to say %q", err, tc.want)
			}
			for _, f := range strings.Fields(tc.content) {
				if len(f) >= 24 && strings.Contains(err.Error(), f) {
					t.Errorf("the error quotes key material: %v", err)
				}
			}
		})
	}
	if _, err := Load(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Error("Load accepted a missing file")
	}
	if _, err := Load(t.TempDir()); err == nil {
		t.Error("Load accepted a directory")
	}
	// 0400 is stricter than 0600: fine.
	if _, err := Load(writeKeyFile(t, "k "+key+"\n", 0o400)); err != nil {
		t.Errorf("Load of a 0400 file: %v", err)
	}
}

// TestNeverPrintsKeys: a keyring that ends up in a log line or an error
// shows its ids, not its keys.
func TestNeverPrintsKeys(t *testing.T) {
	raw := make([]byte, KeySize)
	for i := range raw {
		raw[i] = byte(i + 1)
	}
	k, err := Parse([]byte("k1 " + base64.StdEncoding.EncodeToString(raw) + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	for _, verb := range []string{"%v", "%+v", "%#v", "%s"} {
		out := fmt.Sprintf(verb, k)
		if !strings.Contains(out, "k1") || bytes.Contains([]byte(out), raw[:8]) || strings.Contains(out, "aeads") {
			t.Errorf("%s of a keyring = %q", verb, out)
		}
	}
}
