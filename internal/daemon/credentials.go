package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"

	"github.com/spf13/pflag"

	"gltoken.dev/gltoken/internal/config"
	"gltoken.dev/gltoken/internal/exchange"
	"gltoken.dev/gltoken/internal/gitlab"
	"gltoken.dev/gltoken/internal/ledger"
)

// Credentials runs "exchanged credentials revoke": it ends credentials of
// the configured ledger now, at GitLab and in the ledger, the way the reaper
// does at their TTL (family revocation, an audit event on stderr with outcome
// operator_revoked). A daemon may be running on the same ledger: the store
// is shared safely, as between replicas. It prints one line per credential,
// never a secret. Exit 0 when every credential named is revoked, 1 when one
// could not be (the reaper retries it), 2 on a usage error.
func Credentials(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] != "revoke" {
		fmt.Fprintln(stderr, "exchanged credentials: say revoke (exchanged credentials revoke --id ID | --job N --config FILE)")
		return 2
	}
	fs := pflag.NewFlagSet("exchanged credentials revoke", pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	cfgPath := fs.String("config", "/etc/gltoken/exchanged.yaml", "")
	id := fs.String("id", "", "")
	job := fs.String("job", "", "")
	if err := fs.Parse(args[1:]); err != nil {
		fmt.Fprintf(stderr, "exchanged credentials revoke: %v (see exchanged --help)\n", err)
		return 2
	}
	if fs.NArg() > 0 || (*id == "") == (*job == "") {
		fmt.Fprintln(stderr, "exchanged credentials revoke: name exactly one of --id ID or --job N")
		return 2
	}
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	log := NewLogger(stderr, cfg.LogLevel)
	reaper, closeAll, err := operatorReaper(ctx, cfg, log)
	if err != nil {
		fmt.Fprintf(stderr, "exchanged credentials revoke: %v\n", err)
		return 1
	}
	defer closeAll()
	var recs []ledger.Record
	if *id != "" {
		rec, err := reaper.RevokeNow(ctx, *id)
		if errors.Is(err, ledger.ErrNotFound) {
			fmt.Fprintf(stderr, "exchanged credentials revoke: no credential with ledger id %q\n", *id)
			return 1
		}
		if err != nil {
			fmt.Fprintf(stderr, "exchanged credentials revoke: %v\n", err)
			return 1
		}
		recs = append(recs, rec)
	} else {
		if recs, err = reaper.RevokeJob(ctx, *job); err != nil {
			fmt.Fprintf(stderr, "exchanged credentials revoke: %v\n", err)
			return 1
		}
		if len(recs) == 0 {
			fmt.Fprintf(stdout, "job %s holds no live credential\n", *job)
			return 0
		}
	}
	code := 0
	for _, rec := range recs {
		line := fmt.Sprintf("%s %s %s %s", rec.ID, rec.State, rec.Kind, rec.OwnerPath)
		if rec.SecretSHA256 != "" {
			line += " sha256:" + rec.SecretSHA256[:16]
		}
		if rec.State == ledger.Pending || rec.State == ledger.Active {
			code = 1
			line += " NOT REVOKED: " + rec.LastError + " (the reaper retries)"
		}
		fmt.Fprintln(stdout, line)
	}
	return code
}

// operatorReaper opens the ledger and a GitLab client with the service
// token as the file has it now, for a command that runs once.
func operatorReaper(ctx context.Context, cfg *config.Config, log *slog.Logger) (*exchange.Reaper, func(), error) {
	toks, err := cfg.ReadTokens()
	if err != nil {
		return nil, nil, fmt.Errorf("service account token: %w", err)
	}
	hc, err := gitlab.NewHTTPClient(cfg.GitLab.CAFile)
	if err != nil {
		return nil, nil, fmt.Errorf("gitlab.ca_file: %w", err)
	}
	minter, err := gitlab.New(gitlab.Config{BaseURL: cfg.GitLab.URL, Tokens: staticTokens(toks), HTTPClient: hc, Logger: log})
	if err != nil {
		return nil, nil, fmt.Errorf("gitlab client: %w", err)
	}
	store, err := OpenStore(ctx, cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("ledger: %w", err)
	}
	r := exchange.NewReaper(exchange.ReaperConfig{Interval: cfg.ReaperInterval.D(), Logger: log, Audit: log.With("log", "audit")}, store, minter, nil)
	return r, func() { _ = store.Close() }, nil
}

// staticTokens are the tokens as their files hold them now, for a command
// that runs once.
func staticTokens(secrets []string) []gitlab.Token {
	out := make([]gitlab.Token, len(secrets))
	for i, s := range secrets {
		out[i] = gitlab.Token{Secret: func() string { return s }}
	}
	return out
}
