package exchange

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"gltoken.dev/gltoken/internal/ledger"
	"gltoken.dev/gltoken/internal/periodic"
)

// Job-end revocation: a credential is revoked when no running job holds it
// any more, not only at its TTL. GitLab tells the daemon of a job's end by a
// webhook (JobWatch.Event); the poll (JobWatch.Run) asks GitLab's jobs API
// about the jobs holding live credentials that no event has spoken of for a
// while, so a daemon without a webhook still revokes within one interval.

// JobStatuser reads a CI job's status from GitLab (GET
// /projects/:id/jobs/:job_id); the internal/gitlab adapter implements it.
// Errors wrap ErrForbidden or ErrNotFound when the service account may not
// read the project's jobs, ErrUnavailable or ErrRateLimited when GitLab
// cannot answer now.
type JobStatuser interface {
	JobStatus(ctx context.Context, projectID, jobID string) (string, error)
}

// JobFinished reports whether a GitLab job status is final: the job will not
// run (again) under this id. Jobs end as success, failed or canceled; a
// skipped job never ran. GitLab's other statuses (created,
// waiting_for_resource, preparing, pending, running, manual, scheduled,
// waiting_for_callback) may still run.
func JobFinished(status string) bool {
	switch status {
	case "success", "failed", "canceled", "skipped":
		return true
	}
	return false
}

// JobEvent is what a GitLab job event says (the webhook's Job Hook).
type JobEvent struct {
	ProjectID string
	JobID     string
	Status    string
	// RequestID is the id of the request that delivered the event: the
	// revocations it causes are audited under it.
	RequestID string
}

// JobWatchConfig configures NewJobWatch.
type JobWatchConfig struct {
	// Interval is how often the poll looks at the jobs holding live
	// credentials (default 30s): a job not heard of for Interval is asked
	// about, one GitLab call per job.
	Interval time.Duration
	// HookQuiet: a job a webhook event said is running is asked about only
	// after this long without a further event (default 10 × Interval); the
	// webhook tells of its end.
	HookQuiet time.Duration
	// Concurrency bounds the poll's GitLab calls in flight (default 4).
	Concurrency int
	// MaxJobs bounds the jobs one poll asks about (default 500); the
	// longest unheard-of go first.
	MaxJobs int
	// Fresh is how long Running trusts a "still running" it heard (from an
	// event or the jobs API) before asking GitLab again (default 5s, at
	// most Interval); a finished job stays finished.
	Fresh  time.Duration
	Now    func() time.Time
	Logger *slog.Logger
}

// JobWatch knows which jobs are running, from GitLab's events and its jobs
// API, and ends a job's credentials when it ends.
type JobWatch struct {
	cfg    JobWatchConfig
	store  ledger.Store
	reaper *Reaper
	jobs   JobStatuser

	mu   sync.Mutex
	seen map[string]jobSeen // by job id

	deniedMu sync.Mutex
	denied   map[string]time.Time // project id -> last warning about it
}

type jobSeen struct {
	status string
	at     time.Time
	byHook bool
}

// NewJobWatch builds the watch over the reaper (which revokes) and the
// store (which knows the holds). jobs may be nil: then only events count.
func NewJobWatch(cfg JobWatchConfig, store ledger.Store, reaper *Reaper, jobs JobStatuser) *JobWatch {
	if cfg.Interval <= 0 {
		cfg.Interval = 30 * time.Second
	}
	if cfg.HookQuiet <= 0 {
		cfg.HookQuiet = 10 * cfg.Interval
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 4
	}
	if cfg.MaxJobs <= 0 {
		cfg.MaxJobs = 500
	}
	if cfg.Fresh <= 0 {
		cfg.Fresh = 5 * time.Second
	}
	cfg.Fresh = min(cfg.Fresh, cfg.Interval)
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &JobWatch{cfg: cfg, store: store, reaper: reaper, jobs: jobs, seen: map[string]jobSeen{}, denied: map[string]time.Time{}}
}

// Event takes a job event: a finished job's credentials are ended now.
func (w *JobWatch) Event(ctx context.Context, ev JobEvent) error {
	if ev.JobID == "" || ev.Status == "" {
		return errors.New("job event: no job id or status")
	}
	w.note(ev.JobID, ev.Status, true)
	if !JobFinished(ev.Status) {
		return nil
	}
	return w.ended(ctx, ev.JobID, ev.Status, "webhook", ev.RequestID)
}

func (w *JobWatch) note(jobID, status string, byHook bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if prev, ok := w.seen[jobID]; ok && JobFinished(prev.status) && !JobFinished(status) {
		// Events may arrive out of order; a job id never runs again once
		// finished (a retry is a new job).
		return
	}
	w.seen[jobID] = jobSeen{status: status, at: w.cfg.Now(), byHook: byHook}
}

// ended ends the job's credentials; requestID names the request that told
// of it ("" for the poll: the job end gets an id of its own).
func (w *JobWatch) ended(ctx context.Context, jobID, status, via, requestID string) error {
	if requestID == "" {
		requestID = backgroundID(actionJobEnd)
	}
	ids, err := w.reaper.EndJob(ctx, jobID, requestID)
	if err != nil {
		return err
	}
	if len(ids) > 0 {
		w.cfg.Logger.InfoContext(ctx, "job ended; its credentials are revoked", "request_id", requestID, "job_id", jobID, "status", status, "via", via, "ledger_ids", ids)
	}
	return nil
}

// Running reports whether the job is still running (not finished), from
// the latest event or poll if one was heard within Fresh (or said it
// finished), otherwise from GitLab's jobs API. An error means it could not
// be told.
func (w *JobWatch) Running(ctx context.Context, projectID, jobID string) (bool, string, error) {
	w.mu.Lock()
	s, ok := w.seen[jobID]
	w.mu.Unlock()
	if ok && (JobFinished(s.status) || w.cfg.Now().Sub(s.at) < w.cfg.Fresh) {
		return !JobFinished(s.status), s.status, nil
	}
	if w.jobs == nil {
		return false, "", errors.New("the job's status is unknown: no webhook event was heard of it and the jobs API is not in use")
	}
	status, err := w.jobs.JobStatus(ctx, projectID, jobID)
	if err != nil {
		return false, "", err
	}
	w.note(jobID, status, false)
	return !JobFinished(status), status, nil
}

// Run polls every Interval until ctx ends.
func (w *JobWatch) Run(ctx context.Context) {
	if w.jobs == nil {
		return
	}
	periodic.Run(ctx, w.cfg.Interval, func(ctx context.Context) {
		if _, err := w.PollOnce(ctx); err != nil && ctx.Err() == nil {
			w.cfg.Logger.Error("job poll failed", "error", err)
		}
	})
}

// PollOnce asks GitLab about each job that holds a live credential and was
// not heard of recently (half an Interval, so each poll asks again about
// what the last one found running; HookQuiet after a webhook said it runs),
// one call per job, at most Concurrency at a time, and ends those that
// finished. It returns how many jobs it asked about. A 5xx, a timeout or a
// 429 ends nothing: the job is asked about again at the next poll. A 403 or
// 404 means the service account may not read the project's jobs: it is
// logged (once an hour per project) and the credential ends at its TTL or
// at the job's webhook event.
func (w *JobWatch) PollOnce(ctx context.Context) (int, error) {
	holds, err := w.store.LiveHolds(ctx, 10*w.cfg.MaxJobs)
	if err != nil {
		return 0, fmt.Errorf("list the jobs holding credentials: %w", err)
	}
	now := w.cfg.Now()
	type job struct{ id, project string }
	var due []job
	live := map[string]bool{}
	w.mu.Lock()
	for _, h := range holds {
		if live[h.JobID] || h.ProjectID == "" {
			// Once per job; a hold that names no project cannot be looked up.
			continue
		}
		live[h.JobID] = true
		s, ok := w.seen[h.JobID]
		// Heard of since the last poll (half an interval, so that the
		// ticker's jitter never skips a poll): not asked again yet.
		quiet := w.cfg.Interval / 2
		if ok && s.byHook {
			quiet = w.cfg.HookQuiet
		}
		if ok && now.Sub(s.at) < quiet && !JobFinished(s.status) {
			continue
		}
		if len(due) < w.cfg.MaxJobs {
			due = append(due, job{h.JobID, h.ProjectID})
		}
	}
	// Forget jobs that hold nothing any more (finished ones stay a while, so
	// that a late copy of their ID token is still known to be finished).
	for id, s := range w.seen {
		if !live[id] && now.Sub(s.at) > max(time.Hour, 2*w.cfg.HookQuiet) {
			delete(w.seen, id)
		}
	}
	w.mu.Unlock()

	sem := make(chan struct{}, w.cfg.Concurrency)
	var wg sync.WaitGroup
	for _, j := range due {
		if ctx.Err() != nil {
			break
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			w.pollJob(ctx, j.project, j.id)
		}()
	}
	wg.Wait()
	return len(due), ctx.Err()
}

func (w *JobWatch) pollJob(ctx context.Context, projectID, jobID string) {
	status, err := w.jobs.JobStatus(ctx, projectID, jobID)
	switch {
	case errors.Is(err, ErrForbidden), errors.Is(err, ErrNotFound):
		w.deniedMu.Lock()
		last, warned := w.denied[projectID]
		if !warned || w.cfg.Now().Sub(last) > time.Hour {
			w.denied[projectID] = w.cfg.Now()
		}
		w.deniedMu.Unlock()
		if !warned || w.cfg.Now().Sub(last) > time.Hour {
			w.cfg.Logger.WarnContext(ctx, "job poll: the service account cannot read this project's jobs, so its jobs' credentials end at their TTL or at the job's webhook event; give the service account the Reporter role (or higher) on the project, or send its job events to the daemon",
				"project_id", projectID, "job_id", jobID, "error", err)
		}
		return
	case err != nil:
		// Never taken as the job's end: ask again at the next poll.
		w.cfg.Logger.WarnContext(ctx, "job poll: GitLab did not say whether the job ended; asking again at the next poll", "project_id", projectID, "job_id", jobID, "error", err)
		return
	}
	w.note(jobID, status, false)
	if JobFinished(status) {
		if err := w.ended(ctx, jobID, status, "poll", ""); err != nil {
			w.cfg.Logger.ErrorContext(ctx, "job ended, but its credentials could not be released; they end at their TTL", "job_id", jobID, "error", err)
		}
	}
}
