// Package seal encrypts the secrets the ledger keeps, so that a restarted
// daemon or another replica can hand out a live credential instead of
// minting a new one, while a copy of the database alone reveals nothing.
// Load reads a key file into a Keyring; Keyring.Seal encrypts with
// AES-256-GCM under the file's first key, bound to the ledger record's id;
// Keyring.Open decrypts with whichever key of the file sealed it, so keys
// can be rotated.
//
// The key file holds one key a line, "ID BASE64", where ID is 1 to 64 of
// [A-Za-z0-9._-] and BASE64 is 32 random bytes in standard base64; blank
// lines and lines starting with # are ignored. It must be a regular file
// with no permissions for group or others (0600 or stricter).
package seal

import (
	"bufio"
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
)

// KeySize is the size of a key: AES-256.
const KeySize = 32

// maxFileSize bounds what Load reads: a key file is a few lines.
const maxFileSize = 64 << 10

// ErrUnknownKey: the secret was sealed under a key the key file does not
// hold (any more).
var ErrUnknownKey = errors.New("seal: sealed under a key that is not in the key file")

// ErrOpen: the sealed secret does not decrypt: it was altered, sealed for
// another record, or sealed under another key of the same id.
var ErrOpen = errors.New("seal: the sealed secret does not decrypt")

// Keyring holds the keys of a key file. It is safe for concurrent use. It
// never prints its keys: String, GoString and LogValue show only the ids.
type Keyring struct {
	ids   []string // in file order; ids[0] seals
	aeads map[string]cipher.AEAD
}

// Load reads the key file at path. It refuses a file that group or others
// may read or write, a file that is not regular, and any line it cannot
// take, naming the line but never quoting a key.
func Load(path string) (*Keyring, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("seal: key file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("seal: key file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("seal: key file %s is not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("seal: key file %s has mode %04o: group and others must have no access (chmod 600)", path, perm)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("seal: key file %s: %w", path, err)
	}
	if len(data) > maxFileSize {
		return nil, fmt.Errorf("seal: key file %s is larger than %d KiB", path, maxFileSize>>10)
	}
	k, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("seal: key file %s: %w", path, err)
	}
	return k, nil
}

// Parse reads a key file's content (see the package comment).
func Parse(data []byte) (*Keyring, error) {
	k := &Keyring{aeads: map[string]cipher.AEAD{}}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 4096), maxFileSize)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		fields := strings.Fields(line)
		if len(fields) != 2 {
			return nil, fmt.Errorf("line %d: want \"ID BASE64-KEY\", found %d fields", n, len(fields))
		}
		id := fields[0]
		if !validID(id) {
			return nil, fmt.Errorf("line %d: key id must be 1 to 64 of A-Z a-z 0-9 . _ -", n)
		}
		if _, dup := k.aeads[id]; dup {
			return nil, fmt.Errorf("line %d: key id %s appears twice", n, id)
		}
		key, err := base64.StdEncoding.DecodeString(fields[1])
		if err != nil || len(key) != KeySize {
			return nil, fmt.Errorf("line %d: key %s is not %d bytes in standard base64 (make one with: head -c 32 /dev/urandom | base64)", n, id, KeySize)
		}
		block, err := aes.NewCipher(key)
		if err != nil {
			return nil, fmt.Errorf("line %d: key %s: %w", n, id, err)
		}
		aead, err := cipher.NewGCM(block)
		if err != nil {
			return nil, fmt.Errorf("line %d: key %s: %w", n, id, err)
		}
		k.ids = append(k.ids, id)
		k.aeads[id] = aead
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(k.ids) == 0 {
		return nil, errors.New("no key in the file")
	}
	return k, nil
}

func validID(id string) bool {
	if len(id) == 0 || len(id) > 64 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// SealingKey is the id of the key Seal uses: the file's first.
func (k *Keyring) SealingKey() string { return k.ids[0] }

// KeyIDs lists the ids of every key, the sealing key first.
func (k *Keyring) KeyIDs() []string { return append([]string(nil), k.ids...) }

// Seal encrypts secret for the ledger record recordID under the sealing
// key and returns that key's id and nonce||ciphertext. The record id and
// the key id are the additional data, so a sealed secret copied to another
// record does not open.
func (k *Keyring) Seal(recordID string, secret []byte) (keyID string, sealed []byte, err error) {
	keyID = k.ids[0]
	aead := k.aeads[keyID]
	nonce := make([]byte, aead.NonceSize(), aead.NonceSize()+len(secret)+aead.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		return "", nil, fmt.Errorf("seal: %w", err)
	}
	return keyID, aead.Seal(nonce, nonce, secret, additionalData(keyID, recordID)), nil
}

// Open decrypts what Seal returned for recordID under keyID.
func (k *Keyring) Open(recordID, keyID string, sealed []byte) ([]byte, error) {
	aead, ok := k.aeads[keyID]
	if !ok {
		return nil, ErrUnknownKey
	}
	ns := aead.NonceSize()
	if len(sealed) < ns+aead.Overhead() {
		return nil, ErrOpen
	}
	secret, err := aead.Open(nil, sealed[:ns], sealed[ns:], additionalData(keyID, recordID))
	if err != nil {
		return nil, ErrOpen
	}
	return secret, nil
}

// additionalData binds a sealed secret to its key id and record id.
func additionalData(keyID, recordID string) []byte {
	return []byte("gltoken ledger secret v1\x00" + keyID + "\x00" + recordID)
}

// String shows the key ids only.
func (k *Keyring) String() string {
	return "seal.Keyring{" + strings.Join(k.ids, ",") + "}"
}

// GoString shows the key ids only (fmt's %#v).
func (k *Keyring) GoString() string { return k.String() }
