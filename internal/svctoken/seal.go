package svctoken

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"

	"gltoken.dev/gltoken/internal/fingerprint"
)

// Successors travel between replicas through the shared store, sealed with
// AES-256-GCM under a key derived (HKDF-SHA-256) from the token they replace:
// every replica that held the old token can open it, a reader of the database
// alone cannot. The old token's fingerprint is the additional data, so a
// sealed successor cannot be moved to another rotation's row.

const sealInfo = "gltoken service token rotation v1"

func sealKey(old string) (cipher.AEAD, error) {
	key, err := hkdf.Key(sha256.New, []byte(old), nil, sealInfo, 32)
	if err != nil {
		return nil, err
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

// seal seals next under a key derived from old: nonce || ciphertext.
func seal(old, next string) ([]byte, error) {
	aead, err := sealKey(old)
	if err != nil {
		return nil, fmt.Errorf("seal the new token: %w", err)
	}
	nonce := make([]byte, aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, fmt.Errorf("seal the new token: %w", err)
	}
	return aead.Seal(nonce, nonce, []byte(next), []byte(fingerprint.Of(old))), nil
}

// unseal opens what seal made with the same old token.
func unseal(old string, sealed []byte) (string, error) {
	aead, err := sealKey(old)
	if err != nil {
		return "", fmt.Errorf("open the new token: %w", err)
	}
	if len(sealed) < aead.NonceSize()+aead.Overhead() {
		return "", errors.New("open the new token: sealed value too short")
	}
	n := aead.NonceSize()
	plain, err := aead.Open(nil, sealed[:n], sealed[n:], []byte(fingerprint.Of(old)))
	if err != nil {
		return "", errors.New("open the new token: it was not sealed under this token")
	}
	return string(plain), nil
}
