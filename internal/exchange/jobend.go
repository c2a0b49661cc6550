package exchange

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"gltoken.dev/gltoken/internal/ledger"
)

// EndJob ends what job jobID held: every hold of the job is let go, and each
// credential no running job holds any more is revoked now, with its whole
// family, through the same path as at its TTL (a failed revocation is
// retried by the reaper with back-off), audited with outcome job_ended. The
// audit events carry requestID: the request that told of the job's end (a
// webhook's), or, when empty, one generated for this job end ("jobend-…").
// It returns the ledger ids of the credentials it ended or handed to the
// reaper. Ending a job twice, or one that held nothing, does nothing.
func (r *Reaper) EndJob(ctx context.Context, jobID, requestID string) ([]string, error) {
	if jobID == "" {
		return nil, errors.New("end job: no job id")
	}
	ids, err := r.store.ReleaseJob(ctx, jobID, r.now())
	if err != nil {
		return nil, fmt.Errorf("end job %s: %w", jobID, err)
	}
	if len(ids) == 0 {
		return nil, nil
	}
	if requestID == "" {
		requestID = backgroundID(actionJobEnd)
	}
	// Usually one or two; a job with many is settled a few at a time.
	sem := make(chan struct{}, min(r.workers, len(ids)))
	var wg sync.WaitGroup
	for _, id := range ids {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			rec, err := r.store.Get(ctx, id)
			if err != nil {
				// Released but not read: make it due, so the reaper ends it.
				r.log.Error("job ended, but its credential could not be read; the reaper takes it up", "request_id", requestID, "job_id", jobID, "ledger_id", id, "error", err)
				if rerr := r.store.RetryLater(ctx, id, r.now(), "its last job ended"); rerr != nil {
					r.log.Error("job ended, and its credential could not be scheduled; it ends at its TTL", "request_id", requestID, "job_id", jobID, "ledger_id", id, "error", rerr)
				}
				return
			}
			if rec.State == ledger.Pending || rec.State == ledger.Active {
				r.settleAs(ctx, rec, OutcomeJobEnded, requestID)
			}
		}()
	}
	wg.Wait()
	return ids, nil
}
