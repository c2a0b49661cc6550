package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/spf13/pflag"

	"gltoken.dev/gltoken/internal/config"
	"gltoken.dev/gltoken/internal/ledger"
	"gltoken.dev/gltoken/internal/policy"
	"gltoken.dev/gltoken/internal/suggest"
)

// windowLister is what suggest needs of a store beyond ledger.Store: the
// records created in a window, a page at a time.
type windowLister interface {
	CreatedSince(ctx context.Context, since time.Time, after string, limit int) ([]ledger.Record, error)
}

// suggestPage is how many records suggest reads at once.
const suggestPage = 500

// Suggest runs "exchanged suggest": it reads what each rule of the
// configured policy minted and handed out since now-DURATION and prints
// each rule's use and, as policy YAML in mode shadow, a narrower rule where
// the rule allows more than was used. Read-only; safe while the daemon runs.
// Exit 0 on success, 1 when the configuration, policy or ledger fails, 2 on
// a usage error.
func Suggest(ctx context.Context, args []string, now func() time.Time, stdout, stderr io.Writer) int {
	fs := pflag.NewFlagSet("exchanged suggest", pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	cfgPath := fs.String("config", "/etc/gltoken/exchanged.yaml", "")
	since := fs.String("since", "", "")
	asJSON := fs.Bool("json", false, "")
	if err := fs.Parse(args); err != nil {
		fmt.Fprintf(stderr, "exchanged suggest: %v (see exchanged --help)\n", err)
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "exchanged suggest: unexpected argument %q (see exchanged --help)\n", fs.Arg(0))
		return 2
	}
	window, err := time.ParseDuration(*since)
	switch {
	case *since == "":
		fmt.Fprintln(stderr, "exchanged suggest: --since DURATION is required (e.g. --since 168h)")
		return 2
	case err != nil:
		fmt.Fprintf(stderr, "exchanged suggest: --since %q is not a duration (write e.g. 24h or 168h)\n", *since)
		return 2
	case window <= 0:
		fmt.Fprintf(stderr, "exchanged suggest: --since %q must be positive\n", *since)
		return 2
	}
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	pol, err := policy.Load(cfg.PolicyFile, PolicyOptions(cfg))
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	store, err := OpenStore(ctx, cfg)
	if err != nil {
		fmt.Fprintf(stderr, "exchanged suggest: ledger: %v\n", err)
		return 1
	}
	defer store.Close()
	until := now().UTC()
	rep, err := analyse(ctx, store, pol, suggest.Options{Since: until.Add(-window), Until: until, Policy: PolicyOptions(cfg)}, suggestPage)
	if err != nil {
		fmt.Fprintf(stderr, "exchanged suggest: %v\n", err)
		return 1
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			fmt.Fprintf(stderr, "exchanged suggest: %v\n", err)
			return 1
		}
		return 0
	}
	fmt.Fprint(stdout, rep.Text())
	return 0
}

// analyse pages through the window's records, each with its holders,
// pageSize records at a time.
func analyse(ctx context.Context, store ledger.Store, pol *policy.Policy, opts suggest.Options, pageSize int) (*suggest.Report, error) {
	wl, ok := store.(windowLister)
	if !ok {
		return nil, fmt.Errorf("this store cannot list records by creation time")
	}
	a := suggest.New(pol, opts)
	after := ""
	for {
		page, err := wl.CreatedSince(ctx, opts.Since, after, pageSize)
		if err != nil {
			return nil, fmt.Errorf("ledger: %w", err)
		}
		for _, rec := range page {
			hs, err := store.Holders(ctx, rec.ID)
			if err != nil {
				return nil, fmt.Errorf("ledger: holders of %s: %w", rec.ID, err)
			}
			// Only what the analysis reads: never a secret or its fingerprint.
			rec.SealedSecret, rec.SecretSHA256, rec.SecretKeyID = nil, "", ""
			a.Add(rec, hs)
		}
		if len(page) < pageSize {
			break
		}
		after = page[len(page)-1].ID
	}
	return a.Report()
}
