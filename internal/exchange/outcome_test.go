package exchange

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"gltoken.dev/gltoken/internal/idtoken"
	"gltoken.dev/gltoken/internal/ledger"
)

// recordingObserver keeps the outcomes the metrics would count.
type recordingObserver struct {
	mu        sync.Mutex
	exchanged []string
	revoked   []string
}

func (o *recordingObserver) Exchanged(outcome Outcome, _ ledger.Kind, _ time.Duration) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.exchanged = append(o.exchanged, outcome.String())
}
func (o *recordingObserver) Minted(ledger.Kind) {}
func (o *recordingObserver) Revoked(_ ledger.Kind, outcome Outcome) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.revoked = append(o.revoked, outcome.String())
}

var _ Observer = (*recordingObserver)(nil)

// familyMinter revokes one self-rotated successor with every credential.
type familyMinter struct{ *fakeMinter }

func (m familyMinter) RevokeFamily(ctx context.Context, ref TokenRef) (int, error) {
	return 1, m.Revoke(ctx, ref)
}

// TestOutcomeSet: outcome names are snake_case and unique, and every error
// code of an exchange is an exchange outcome of the same name.
func TestOutcomeSet(t *testing.T) {
	seen := map[string]bool{}
	for _, o := range append(ExchangeOutcomes(), RevocationOutcomes()...) {
		if !regexp.MustCompile(`^[a-z]+(_[a-z]+)*$`).MatchString(o.String()) {
			t.Errorf("outcome %q is not snake_case", o)
		}
		if seen[o.String()] && o != OutcomeUnavailable { // the one outcome both lists share
			t.Errorf("outcome %q is listed twice", o)
		}
		seen[o.String()] = true
	}
	for _, code := range []string{CodeInvalidRequest, CodeInvalidGrant, CodeInvalidTarget, CodeInvalidScope, CodeUnavailable, CodeRateLimited, CodeServerError} {
		o := outcomeOf(&Error{Code: code})
		if o.String() != code || !slices.Contains(ExchangeOutcomes(), o) {
			t.Errorf("code %s has outcome %q", code, o)
		}
	}
	if o := outcomeOf(&Error{Code: CodeInvalidTarget, denied: true}); o != OutcomeDenied {
		t.Errorf("a policy denial has outcome %q", o)
	}
}

// TestAuditOutcomesAreMetricOutcomes drives every kind of exchange and
// revocation the way the daemon does and checks that the audit events and
// the metrics name each outcome alike, from the one set, and that each
// action's events carry one request id: the client's, or one generated per
// reaper pass, job end and operator command.
func TestAuditOutcomesAreMetricOutcomes(t *testing.T) {
	var logs strings.Builder
	var logMu sync.Mutex
	audit := slog.New(slog.NewJSONHandler(lockedWriter{&logMu, &logs}, nil))
	f := newFixtureWith(t, testPolicy, audit)
	obs := &recordingObserver{}
	f.svc.cfg.Observer = obs
	for _, job := range []string{"13", "14"} {
		claims := map[string]string{"project_path": "platform/app", "project_id": "7", "ref": "main", "ref_protected": "true", "pipeline_id": "11", "job_id": job}
		f.ver.tokens["job-"+job] = &idtoken.Token{Issuer: "https://gitlab.example.com", Subject: "s", ID: "jti-" + job,
			IssuedAt: f.clock.Now(), Expiry: f.clock.Now().Add(2 * time.Hour), Claims: claims}
	}
	ctx := context.Background()
	r := NewReaper(ReaperConfig{Now: f.clock.Now, Audit: audit, Observer: obs}, f.store, familyMinter{f.minter}, f.svc.Cache())
	lib := "https://gitlab.example.com/platform/lib.git"
	libs := func(n string) string { return "https://gitlab.example.com/platform/libs/" + n + ".git" }
	grant := func(tok, res string) *Issued {
		t.Helper()
		granted, err := f.exchange(tok, res, "read_repository")
		if err != nil {
			t.Fatalf("exchange %s: %v", res, err)
		}
		return granted
	}
	refuse := func(res, scope, wantCode string) {
		t.Helper()
		var e *Error
		if _, err := f.exchange("job-token", res, scope); !errors.As(err, &e) || e.Code != wantCode {
			t.Fatalf("exchange %s %s: %v, want %s", res, scope, err, wantCode)
		}
	}

	a := grant("job-token", lib)
	refuse("https://gitlab.example.com/platform/secret.git", "read_repository", CodeInvalidTarget) // the policy: denied
	refuse("https://evil.example.com/platform/lib.git", "read_repository", CodeInvalidTarget)      // not this GitLab's
	refuse(lib, "read_everything", CodeInvalidScope)
	for _, tok := range []string{a.AccessToken, a.AccessToken, "gldt-never-minted"} {
		if err := f.svc.Revoke(ctx, "client-1", tok, "uid=1"); err != nil {
			t.Fatal(err)
		}
	}
	grant("job-token", libs("one"))
	grant("job-token", libs("two"))
	if ended, err := r.EndJob(ctx, "12", ""); err != nil || len(ended) != 2 {
		t.Fatalf("EndJob = %v, %v", ended, err)
	}
	grant("job-13", libs("three"))
	grant("job-13", libs("four"))
	if recs, err := r.RevokeJob(ctx, "13"); err != nil || len(recs) != 2 {
		t.Fatalf("RevokeJob = %v, %v", recs, err)
	}
	grant("job-14", libs("five"))
	f.clock.Add(3 * time.Hour)
	if n, err := r.RunOnce(ctx); err != nil || n != 1 {
		t.Fatalf("reaper settled %d: %v", n, err)
	}

	type event struct {
		Msg       string `json:"msg"`
		Outcome   string `json:"outcome"`
		RequestID string `json:"request_id"`
	}
	var exchanged, revoked []string
	ids := map[string][]string{} // request id -> outcomes
	logMu.Lock()
	text := logs.String()
	logMu.Unlock()
	for _, line := range strings.Split(strings.TrimSpace(text), "\n") {
		var ev event
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatalf("%v: %s", err, line)
		}
		if ev.RequestID == "" {
			t.Errorf("audit event without a request id: %s", line)
		}
		ids[ev.RequestID] = append(ids[ev.RequestID], ev.Outcome)
		switch ev.Msg {
		case "exchange":
			if !slices.ContainsFunc(ExchangeOutcomes(), func(o Outcome) bool { return o.String() == ev.Outcome }) {
				t.Errorf("exchange outcome %q is not in the set", ev.Outcome)
			}
			exchanged = append(exchanged, ev.Outcome)
		default:
			if !slices.ContainsFunc(RevocationOutcomes(), func(o Outcome) bool { return o.String() == ev.Outcome }) {
				t.Errorf("revocation outcome %q is not in the set: %s", ev.Outcome, line)
			}
			switch ev.Outcome {
			case OutcomeUnknownToken.String(), OutcomeAlreadyRevoked.String():
				// Nothing was revoked: audited, not counted.
			default:
				revoked = append(revoked, ev.Outcome)
			}
		}
	}
	wantExchanged := []string{"granted", "denied", "invalid_target", "invalid_scope", "granted", "granted", "granted", "granted", "granted"}
	if !slices.Equal(exchanged, wantExchanged) || !slices.Equal(obs.exchanged, wantExchanged) {
		t.Errorf("exchange outcomes: audit %v, metrics %v, want %v", exchanged, obs.exchanged, wantExchanged)
	}
	wantRevoked := []string{"client_revoked", "escaped", "escaped", "job_ended", "job_ended", "escaped", "escaped", "operator_revoked", "operator_revoked", "escaped", "revoked"}
	slices.Sort(wantRevoked)
	slices.Sort(revoked)
	metrics := slices.Clone(obs.revoked)
	slices.Sort(metrics)
	if !slices.Equal(revoked, wantRevoked) || !slices.Equal(metrics, wantRevoked) {
		t.Errorf("revocation outcomes: audit %v, metrics %v, want %v", revoked, metrics, wantRevoked)
	}

	byPrefix := map[string][][]string{}
	for id, outcomes := range ids {
		prefix, hexPart, _ := strings.Cut(id, "-")
		if id == "r1" || id == "client-1" {
			continue
		}
		if len(hexPart) != 16 {
			t.Errorf("request id %q", id)
		}
		slices.Sort(outcomes)
		byPrefix[prefix] = append(byPrefix[prefix], outcomes)
	}
	for prefix, want := range map[string][]string{
		"jobend":   {"escaped", "escaped", "job_ended", "job_ended"},
		"operator": {"escaped", "escaped", "operator_revoked", "operator_revoked"},
		"reaper":   {"escaped", "revoked"},
	} {
		if got := byPrefix[prefix]; len(got) != 1 || !slices.Equal(got[0], want) {
			t.Errorf("%s actions: %v, want one with %v", prefix, got, want)
		}
	}
	if got := ids["client-1"]; !slices.Equal(got, []string{"client_revoked", "already_revoked", "unknown_token"}) {
		t.Errorf("the client's revocations: %v", got)
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	b  *strings.Builder
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

// TestOutcomesDocumented: docs/reference.md's two outcome tables list
// exactly the set, in its order.
func TestOutcomesDocumented(t *testing.T) {
	b, err := os.ReadFile("../../docs/reference.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	for _, tt := range []struct {
		heading string
		set     []Outcome
	}{
		{"Exchange outcomes", ExchangeOutcomes()},
		{"Revocation outcomes", RevocationOutcomes()},
	} {
		_, rest, ok := strings.Cut(doc, "\n"+tt.heading)
		if !ok {
			t.Fatalf("docs/reference.md has no %q table", tt.heading)
		}
		var documented []string
		inTable := false
		for _, line := range strings.Split(rest, "\n") {
			if !strings.HasPrefix(line, "|") {
				if inTable {
					break // the table's end
				}
				continue
			}
			inTable = true
			if m := regexp.MustCompile("^\\| `([a-z_]+)` \\|").FindStringSubmatch(line); m != nil {
				documented = append(documented, m[1])
			}
		}
		var want []string
		for _, o := range tt.set {
			want = append(want, o.String())
		}
		if !slices.Equal(documented, want) {
			t.Errorf("docs/reference.md's %s are %v; the code's are %v", tt.heading, documented, want)
		}
	}
}
