package main

import (
	"bytes"
	"context"
	"regexp"
	"slices"
	"strings"
	"testing"

	"gltoken.dev/gltoken/internal/exchange"
	"gltoken.dev/gltoken/internal/ledger"
)

// TestDemo runs `make demo` as a user does and checks that what it prints
// names things as the daemon's audit events, metrics and docs do: credential
// kinds are ledger kinds, outcomes come from exchange's set (a policy
// denial is "denied", a client's revocation "client_revoked"). It never
// prints a secret.
func TestDemo(t *testing.T) {
	var out bytes.Buffer
	if err := run(context.Background(), &out); err != nil {
		t.Fatalf("demo failed: %v\n%s", err, out.String())
	}
	text := out.String()
	kinds := []string{string(ledger.ProjectDeployToken), string(ledger.GroupDeployToken), string(ledger.ProjectAccessToken), string(ledger.GroupAccessToken), "-"}
	outcomes := map[string]bool{}
	for _, o := range append(exchange.ExchangeOutcomes(), exchange.RevocationOutcomes()...) {
		outcomes[o.String()] = true
	}
	if m := regexp.MustCompile(`(?m)^\s+kind\s+(\S+) \(`).FindStringSubmatch(text); m == nil || !slices.Contains(kinds, m[1]) {
		t.Errorf("the minted credential's kind: %q\n%s", m, text)
	}
	_, events, ok := strings.Cut(text, "exchanged's audit events")
	if !ok {
		t.Fatalf("no audit events shown:\n%s", text)
	}
	var seen []string
	for _, m := range regexp.MustCompile(`(?m)^  (exchange|revocation)\s+(\S+)\s+rule=\S+ target=\S+ kind=(\S+)`).FindAllStringSubmatch(events, -1) {
		if !outcomes[m[2]] {
			t.Errorf("audit outcome %q is not one of exchange's outcomes", m[2])
		}
		if !slices.Contains(kinds, m[3]) {
			t.Errorf("audit kind %q is not a ledger kind", m[3])
		}
		seen = append(seen, m[1]+" "+m[2])
	}
	for _, want := range []string{"exchange granted", "exchange denied", "revocation client_revoked"} {
		if !slices.Contains(seen, want) {
			t.Errorf("the demo shows no %q audit event: %v", want, seen)
		}
	}
	for _, secret := range regexp.MustCompile(`gl(dt|pat|oat)-[A-Za-z0-9_-]{8,}`).FindAllString(text, -1) {
		t.Errorf("the demo printed a secret %s…", secret[:8])
	}
}
