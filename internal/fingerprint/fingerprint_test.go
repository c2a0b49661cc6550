package fingerprint

import "testing"

func TestOf(t *testing.T) {
	// The SHA-256 of "abc" (FIPS 180-2, appendix B.1).
	if got := Of("abc"); got != "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad" {
		t.Errorf("Of(abc) = %s", got)
	}
	if got := Short("abc"); got != "sha256:ba7816bf8f01cfea" {
		t.Errorf("Short(abc) = %s", got)
	}
}
