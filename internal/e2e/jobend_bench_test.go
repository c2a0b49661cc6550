package e2e

import (
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"
	"testing"
	"time"

	"gltoken.dev/gltoken/internal/gitlabfake"
)

// benchJobEnd measures, through the real daemon, the time from a job's end
// at the stand-in (EndJob) to the revocation of its credential there: one
// job, one credential per iteration. Run with a fixed count, e.g.
// go test ./internal/e2e -run '^$' -bench JobEnd -benchtime 20x
func benchJobEnd(b *testing.B, poll string, webhook bool) {
	w := newWorld(b)
	d := w.jobEndDaemon(b, poll, webhook, "")
	if webhook {
		w.gl.AddWebhook(gitlabfake.Webhook{URL: d.url + "/v1/gitlab/events", Token: webhookSecret})
	}
	pollEvery, err := time.ParseDuration(poll)
	if err != nil {
		b.Fatal(err)
	}
	var lags []time.Duration
	b.ResetTimer()
	for i := range b.N {
		b.StopTimer()
		job := int64(9000 + i)
		tok := w.job("main", true, jobWith(job))
		resp, body := d.exchange(tok, w.gl.URL()+"/platform/lib.git", "read_repository")
		if resp.StatusCode != http.StatusOK {
			b.Fatalf("exchange: %d %s", resp.StatusCode, body)
		}
		if !webhook {
			// Not in step with the poll's ticker: end the job at a random
			// point of its interval.
			time.Sleep(rand.N(pollEvery))
		}
		b.StartTimer()
		start := time.Now()
		if err := w.gl.EndJob(job, "success"); err != nil {
			b.Fatal(err)
		}
		for len(w.liveMinted()) != 0 {
			if time.Since(start) > 2*time.Minute {
				b.Fatalf("not revoked after 2m:\n%s", d.logs.String())
			}
			time.Sleep(2 * time.Millisecond)
		}
		lags = append(lags, time.Since(start))
	}
	b.StopTimer()
	slices.Sort(lags)
	q := func(p float64) time.Duration { return lags[min(len(lags)-1, int(p*float64(len(lags))))] }
	b.ReportMetric(q(0.5).Seconds(), "p50_s")
	b.ReportMetric(q(0.99).Seconds(), "p99_s")
	b.ReportMetric(lags[len(lags)-1].Seconds(), "max_s")
	b.ReportMetric(0, "ns/op")
	fmt.Printf("job end -> revocation (%s, poll %s): n=%d p50=%s p99=%s max=%s\n",
		map[bool]string{true: "webhook", false: "poll only"}[webhook], poll, len(lags),
		q(0.5).Round(time.Millisecond), q(0.99).Round(time.Millisecond), lags[len(lags)-1].Round(time.Millisecond))
}

func BenchmarkJobEndRevocationWebhook(b *testing.B) { benchJobEnd(b, "60s", true) }
func BenchmarkJobEndRevocationPoll(b *testing.B)    { benchJobEnd(b, "10s", false) }
