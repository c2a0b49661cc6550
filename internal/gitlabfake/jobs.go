package gitlabfake

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// CI jobs: a job the stand-in issued an ID token for is running (GitLab
// issues ID tokens when a runner picks the job up). EndJob finishes it and
// delivers a job event to every webhook, as GitLab's Job Hook does
// (Gitlab::DataBuilder::Build, WebHookService's headers); GET
// /api/v4/projects/:id/jobs/:job_id answers its status with GitLab's JSON
// shape and permission (read_build).

// ciJob is one job the stand-in knows.
type ciJob struct {
	id, projectID, pipelineID int64
	name, stage, ref, sha     string
	tag                       bool
	status                    string
	user                      *User
	createdAt, startedAt      time.Time
	finishedAt                time.Time
}

// Webhook is a project, group or system hook receiving job events.
type Webhook struct {
	URL string
	// Token is the hook's secret token, sent as X-Gitlab-Token ("" sends none).
	Token string
	// System: an instance-wide system hook (X-Gitlab-Event: System Hook);
	// otherwise a hook of the job's project or group (Job Hook). Every hook
	// receives every job's events.
	System bool
}

// HookDelivery is one webhook request the stand-in sent.
type HookDelivery struct {
	URL    string
	Event  string // X-Gitlab-Event
	JobID  int64
	Status string // build_status
	Code   int    // the receiver's HTTP status, 0 when none came
	Err    string
	At     time.Time
}

type jobState struct {
	mu         sync.Mutex
	jobs       map[int64]*ciJob
	hooks      []Webhook
	deliveries []HookDelivery
	wg         sync.WaitGroup
	client     *http.Client
}

func (s *Server) jobStateOnce() *jobState {
	s.jobsOnce.Do(func() {
		s.jobState = &jobState{jobs: map[int64]*ciJob{}, client: &http.Client{Timeout: 10 * time.Second}}
	})
	return s.jobState
}

// recordJob notes the job an ID token was issued for as running.
func (s *Server) recordJob(claims map[string]any, u *User, now time.Time) {
	id, _ := strconv.ParseInt(fmt.Sprint(claims["job_id"]), 10, 64)
	pid, _ := strconv.ParseInt(fmt.Sprint(claims["job_project_id"]), 10, 64)
	if pid == 0 {
		pid, _ = strconv.ParseInt(fmt.Sprint(claims["project_id"]), 10, 64)
	}
	pipeline, _ := strconv.ParseInt(fmt.Sprint(claims["pipeline_id"]), 10, 64)
	if id == 0 || pid == 0 {
		return
	}
	js := s.jobStateOnce()
	js.mu.Lock()
	defer js.mu.Unlock()
	if _, ok := js.jobs[id]; ok {
		return // another ID token of the same job
	}
	js.jobs[id] = &ciJob{id: id, projectID: pid, pipelineID: pipeline, name: "job-" + strconv.FormatInt(id, 10), stage: "test",
		ref: fmt.Sprint(claims["ref"]), sha: fmt.Sprint(claims["sha"]), tag: claims["ref_type"] == "tag",
		status: "running", user: u, createdAt: now, startedAt: now}
}

// AddWebhook registers a hook that receives job events.
func (s *Server) AddWebhook(h Webhook) {
	js := s.jobStateOnce()
	js.mu.Lock()
	defer js.mu.Unlock()
	js.hooks = append(js.hooks, h)
}

// JobStatus is the status of a job the stand-in knows ("" when it knows none).
func (s *Server) JobStatus(jobID int64) string {
	js := s.jobStateOnce()
	js.mu.Lock()
	defer js.mu.Unlock()
	if j := js.jobs[jobID]; j != nil {
		return j.status
	}
	return ""
}

// EndJob finishes a running job with status (success, failed or canceled)
// and sends the job event to every webhook, each in the background as
// GitLab's Sidekiq does (WaitHooks waits for them). It is an error to end
// a job the stand-in does not know or that has finished already.
func (s *Server) EndJob(jobID int64, status string) error {
	switch status {
	case "success", "failed", "canceled":
	default:
		return fmt.Errorf("gitlabfake: a job ends as success, failed or canceled, not %q", status)
	}
	js := s.jobStateOnce()
	js.mu.Lock()
	j := js.jobs[jobID]
	if j == nil {
		js.mu.Unlock()
		return fmt.Errorf("gitlabfake: no job %d (issue an ID token for it first)", jobID)
	}
	if j.status != "running" {
		js.mu.Unlock()
		return fmt.Errorf("gitlabfake: job %d is %s already", jobID, j.status)
	}
	j.status = status
	j.finishedAt = s.now()
	hooks := append([]Webhook(nil), js.hooks...)
	snapshot := *j
	js.mu.Unlock()
	for _, h := range hooks {
		js.wg.Add(1)
		go func() {
			defer js.wg.Done()
			s.deliver(h, &snapshot)
		}()
	}
	return nil
}

// WaitHooks waits for the webhook deliveries under way.
func (s *Server) WaitHooks() { s.jobStateOnce().wg.Wait() }

// HookDeliveries lists the webhook requests sent so far.
func (s *Server) HookDeliveries() []HookDelivery {
	js := s.jobStateOnce()
	js.mu.Lock()
	defer js.mu.Unlock()
	return append([]HookDelivery(nil), js.deliveries...)
}

func (s *Server) deliver(h Webhook, j *ciJob) {
	body, _ := json.Marshal(s.jobHookData(j))
	event := "Job Hook"
	if h.System {
		event = "System Hook"
	}
	d := HookDelivery{URL: h.URL, Event: event, JobID: j.id, Status: j.status, At: s.now()}
	req, err := http.NewRequest(http.MethodPost, h.URL, bytes.NewReader(body))
	if err == nil {
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("User-Agent", "GitLab/18.6.0")
		req.Header.Set("Idempotency-Key", newUUID())
		req.Header.Set("X-Gitlab-Event", event)
		req.Header.Set("X-Gitlab-Webhook-UUID", newUUID())
		req.Header.Set("X-Gitlab-Event-UUID", newUUID())
		req.Header.Set("X-Gitlab-Instance", s.url)
		if h.Token != "" {
			req.Header.Set("X-Gitlab-Token", h.Token)
		}
		var resp *http.Response
		if resp, err = s.jobStateOnce().client.Do(req); err == nil {
			d.Code = resp.StatusCode
			resp.Body.Close()
		}
	}
	if err != nil {
		d.Err = err.Error()
	}
	js := s.jobStateOnce()
	js.mu.Lock()
	js.deliveries = append(js.deliveries, d)
	js.mu.Unlock()
	if s.opts.Logf != nil {
		s.opts.Logf("gitlabfake: webhook %s to %s: job %d %s -> %d", event, h.URL, j.id, j.status, d.Code)
	}
}

func isoOrNil(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return t.UTC().Format("2006-01-02 15:04:05 UTC")
}

func iso8601OrNil(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return t.UTC().Format("2006-01-02T15:04:05.000Z")
}

func durationOrNil(from, to time.Time) any {
	if from.IsZero() || to.IsZero() {
		return nil
	}
	return to.Sub(from).Seconds()
}

// jobHookData is Gitlab::DataBuilder::Build.build for the job.
func (s *Server) jobHookData(j *ciJob) map[string]any {
	s.mu.Lock()
	p := s.projects[j.projectID]
	s.mu.Unlock()
	var user any
	if j.user != nil {
		user = map[string]any{"id": j.user.ID, "name": j.user.Username, "username": j.user.Username, "avatar_url": nil, "email": "[REDACTED]"}
	}
	projectName, name, homepage, visibility := "", "", "", 0
	path := ""
	if p != nil {
		projectName, name, path = p.PathWithNamespace, p.Name, p.PathWithNamespace
		homepage = s.url + "/" + p.PathWithNamespace
		visibility = map[string]int{"private": 0, "internal": 10, "public": 20}[visibilityOr(p.Visibility)]
	}
	return map[string]any{
		"object_kind":           "build",
		"ref":                   j.ref,
		"tag":                   j.tag,
		"before_sha":            "0000000000000000000000000000000000000000",
		"sha":                   j.sha,
		"build_id":              j.id,
		"build_name":            j.name,
		"build_stage":           j.stage,
		"build_status":          j.status,
		"build_created_at":      isoOrNil(j.createdAt),
		"build_started_at":      isoOrNil(j.startedAt),
		"build_finished_at":     isoOrNil(j.finishedAt),
		"build_created_at_iso":  iso8601OrNil(j.createdAt),
		"build_started_at_iso":  iso8601OrNil(j.startedAt),
		"build_finished_at_iso": iso8601OrNil(j.finishedAt),
		"build_duration":        durationOrNil(j.startedAt, j.finishedAt),
		"build_queued_duration": 0.5,
		"build_allow_failure":   false,
		"build_failure_reason":  map[bool]string{true: "script_failure", false: "unknown_failure"}[j.status == "failed"],
		"retries_count":         0,
		"pipeline_id":           j.pipelineID,
		"project_id":            j.projectID,
		"project_name":          projectName,
		"user":                  user,
		"commit": map[string]any{
			"id": j.pipelineID, "name": nil, "sha": j.sha, "message": "commit", "author_name": "CI", "author_email": "ci@example.com",
			"author_url": "mailto:ci@example.com", "status": j.status, "duration": nil, "started_at": isoOrNil(j.startedAt), "finished_at": isoOrNil(j.finishedAt),
		},
		"repository": map[string]any{
			"name": name, "url": "git@127.0.0.1:" + path + ".git", "description": nil, "homepage": homepage,
			"git_http_url": homepage + ".git", "git_ssh_url": "git@127.0.0.1:" + path + ".git", "visibility_level": visibility,
		},
		"project":     map[string]any{"id": j.projectID, "name": name, "path_with_namespace": path, "web_url": homepage, "visibility_level": visibility, "ci_config_path": nil},
		"runner":      map[string]any{"id": 1, "description": "stand-in runner", "runner_type": "instance_type", "active": true, "is_shared": true, "tags": []string{}},
		"environment": nil,
	}
}

// handleGetJob is GET /projects/:id/jobs/:job_id (lib/api/ci/jobs.rb):
// the project must be visible to the caller (404 "404 Project Not Found"),
// the caller needs read_build on it (Reporter or higher; Guest too while
// the project's pipelines are public, GitLab's default; else 403), and the
// job must belong to the project (404 "404 Not found").
func (s *Server) handleGetJob(w http.ResponseWriter, r *http.Request, p params) {
	c := s.authenticateAPI(w, r, scopeAPI)
	if c == nil {
		return
	}
	s.mu.Lock()
	src, ok := s.findSourceLocked(w, "projects", p["id"], c.user)
	if !ok {
		s.mu.Unlock()
		return
	}
	level := s.levelLocked(c.user, src)
	private := src.project.PrivatePipelines
	s.mu.Unlock()
	if level < Reporter && (private || level < Guest) && src.project.Visibility != "public" {
		writeMessage(w, http.StatusForbidden, "403 Forbidden")
		return
	}
	id, err := strconv.ParseInt(p["job_id"], 10, 64)
	if err != nil {
		writeGrapeError(w, "job_id is invalid")
		return
	}
	js := s.jobStateOnce()
	js.mu.Lock()
	j := js.jobs[id]
	var snap ciJob
	if j != nil {
		snap = *j
	}
	js.mu.Unlock()
	if j == nil || snap.projectID != src.project.ID {
		writeMessage(w, http.StatusNotFound, "404 Not found")
		return
	}
	writeJSON(w, http.StatusOK, s.jobJSON(&snap, src.project))
}

// jobJSON is API::Entities::Ci::Job.
func (s *Server) jobJSON(j *ciJob, p *Project) map[string]any {
	var user any
	if j.user != nil {
		user = map[string]any{"id": j.user.ID, "username": j.user.Username, "name": j.user.Username, "state": "active"}
	}
	web := s.url + "/" + p.PathWithNamespace
	var failure any
	if j.status == "failed" {
		failure = "script_failure"
	}
	return map[string]any{
		"id": j.id, "status": j.status, "stage": j.stage, "name": j.name, "ref": j.ref, "tag": j.tag,
		"coverage": nil, "allow_failure": false,
		"created_at": iso8601OrNil(j.createdAt), "started_at": iso8601OrNil(j.startedAt), "finished_at": iso8601OrNil(j.finishedAt),
		"erased_at": nil, "duration": durationOrNil(j.startedAt, j.finishedAt), "queued_duration": 0.5,
		"user":   user,
		"commit": map[string]any{"id": j.sha, "short_id": shortSHA(j.sha), "title": "commit", "message": "commit"},
		"pipeline": map[string]any{"id": j.pipelineID, "iid": j.pipelineID, "project_id": p.ID, "ref": j.ref, "sha": j.sha, "status": j.status,
			"source": "push", "web_url": fmt.Sprintf("%s/-/pipelines/%d", web, j.pipelineID)},
		"web_url":        fmt.Sprintf("%s/-/jobs/%d", web, j.id),
		"project":        map[string]any{"ci_job_token_scope_enabled": true},
		"artifacts":      []any{},
		"runner":         map[string]any{"id": 1, "description": "stand-in runner", "ip_address": nil, "active": true, "paused": false, "is_shared": true, "runner_type": "instance_type", "name": nil, "online": true, "status": "online"},
		"runner_manager": nil,
		"tag_list":       []string{},
		"archived":       false,
		"failure_reason": failure,
	}
}

func shortSHA(sha string) string {
	if len(sha) > 8 {
		return sha[:8]
	}
	return sha
}
