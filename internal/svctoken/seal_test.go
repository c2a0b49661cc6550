package svctoken

import (
	"bytes"
	"testing"
)

func TestSealOpensOnlyWithTheOldToken(t *testing.T) {
	sealed, err := seal("glpat-old", "glpat-new")
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(sealed, []byte("glpat-new")) {
		t.Fatal("the successor is readable in the sealed value")
	}
	got, err := unseal("glpat-old", sealed)
	if err != nil || got != "glpat-new" {
		t.Fatalf("unseal: %q %v", got, err)
	}
	if _, err := unseal("glpat-other", sealed); err == nil {
		t.Fatal("opened with another token")
	}
	sealed[len(sealed)-1] ^= 1
	if _, err := unseal("glpat-old", sealed); err == nil {
		t.Fatal("opened a tampered value")
	}
	if _, err := unseal("glpat-old", sealed[:5]); err == nil {
		t.Fatal("opened a truncated value")
	}
}
