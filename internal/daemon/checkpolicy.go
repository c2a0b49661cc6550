package daemon

import (
	"fmt"
	"io"
	"strings"

	"gltoken.dev/gltoken/internal/config"
	"gltoken.dev/gltoken/internal/policy"
)

// CheckPolicy validates the policy file file on its own, as
// `exchanged check --project-policy FILE` does: for the CI of the repository
// that holds a policy, where the daemon's token and ledger are not. With
// cfgPath set, the policy is checked under that configuration's options
// (gitlab.url: the gitlab.com tenant rules; max_ttl: the ttl warnings) and
// nothing else of the configuration is read; with cfgPath "", under none.
// It prints every problem and warning to stderr and a summary to stdout, and
// returns the exit code (0 valid, 1 not).
func CheckPolicy(cfgPath, file string, stdout, stderr io.Writer) int {
	var opts policy.Options
	if cfgPath != "" {
		cfg, err := config.Load(cfgPath)
		if err != nil {
			fmt.Fprintln(stderr, err)
			return 1
		}
		opts = PolicyOptions(cfg)
	}
	pol, err := policy.Load(file, opts)
	for _, w := range pol.Warnings() {
		fmt.Fprintln(stderr, w)
	}
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	var enforced, shadow []string
	for _, name := range pol.Rules() {
		if pol.Shadow(name) {
			shadow = append(shadow, name)
		} else {
			enforced = append(enforced, name)
		}
	}
	fmt.Fprintf(stdout, "%s: ok (%d rules: %s)\n", file, len(enforced), strings.Join(enforced, ", "))
	if len(shadow) > 0 {
		fmt.Fprintf(stdout, "%s: %d rules in mode shadow, enforced nowhere: %s\n", file, len(shadow), strings.Join(shadow, ", "))
	}
	return 0
}
