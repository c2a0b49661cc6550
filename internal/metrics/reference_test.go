package metrics

import (
	"context"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"gltoken.dev/gltoken/internal/exchange"
	"gltoken.dev/gltoken/internal/ledger"
)

// TestReferenceNamesEveryMetric: docs/reference.md's metrics table names
// exactly the gltoken_ metrics the daemon exports (every source set).
func TestReferenceNamesEveryMetric(t *testing.T) {
	count := func(context.Context) (int, error) { return 1, nil }
	m := New(Sources{
		LiveTokens: count, Overdue: count,
		JWKSRefreshes: func() (uint64, uint64) { return 0, 0 },
		VerifyCache:   func() (uint64, uint64) { return 0, 0 },
		PolicyRules:   func() int { return 1 },
		PolicyReloads: func() (uint64, uint64) { return 0, 0 },
		ServiceTokens: func() []ServiceToken {
			return []ServiceToken{{File: "/var/lib/gltoken/gitlab-token", Fingerprint: "sha256:0123456789abcdef"}}
		},
	})
	// A vector is exported once it has a sample: record one of each.
	m.Exchanged(exchange.OutcomeGranted, ledger.ProjectDeployToken, time.Millisecond)
	m.Minted(ledger.ProjectDeployToken)
	m.Revoked(ledger.ProjectDeployToken, exchange.OutcomeRevoked)
	m.GitLabResponse("GET", "/projects/:id", 200)
	m.Limited(exchange.LimitJobMints)
	m.ServiceTokenEvent("/var/lib/gltoken/gitlab-token", "rotated")
	families, err := m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	exported := map[string]bool{}
	for _, f := range families {
		if strings.HasPrefix(f.GetName(), "gltoken_") {
			exported[f.GetName()] = true
		}
	}
	b, err := os.ReadFile("../../docs/reference.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, _ := strings.Cut(string(b), "\n## Metrics")
	documented := map[string]bool{}
	for _, line := range strings.Split(section, "\n") {
		if cell, _, ok := strings.Cut(strings.TrimPrefix(line, "| "), " |"); ok && strings.HasPrefix(line, "| `") {
			for _, name := range regexp.MustCompile(`gltoken_[a-z_]+`).FindAllString(cell, -1) {
				documented[name] = true
			}
		}
	}
	var missing, extra []string
	for name := range exported {
		if !documented[name] {
			missing = append(missing, name)
		}
	}
	for name := range documented {
		if !exported[name] {
			extra = append(extra, name)
		}
	}
	slices.Sort(missing)
	slices.Sort(extra)
	if len(missing)+len(extra) > 0 {
		t.Errorf("docs/reference.md lacks %v and names %v, which are not exported", missing, extra)
	}
}
