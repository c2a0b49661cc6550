package httpapi

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"mime"
	"net/http"
	"strconv"

	"gltoken.dev/gltoken/internal/exchange"
)

// JobEvents takes GitLab's job events; *exchange.JobWatch implements it.
type JobEvents interface {
	Event(ctx context.Context, ev exchange.JobEvent) error
}

// maxEventBytes bounds a job event's body (GitLab's are a few KB).
const maxEventBytes = 256 << 10

// jobHook is the part of GitLab's job event payload the daemon reads
// (Gitlab::DataBuilder::Build: object_kind "build", build_id, build_status,
// project_id = the project the job runs in).
type jobHook struct {
	ObjectKind  string `json:"object_kind"`
	BuildID     int64  `json:"build_id"`
	BuildStatus string `json:"build_status"`
	ProjectID   int64  `json:"project_id"`
}

// events is POST /v1/gitlab/events, GitLab's webhook. The shared secret
// arrives in X-Gitlab-Token and is compared in constant time; a request
// without it, or with another, is answered 401 and changes nothing. Job
// events (X-Gitlab-Event: Job Hook, or System Hook with object_kind build)
// are acted on; push events and every other kind are answered 200 and
// ignored, so GitLab does not count them as failures and disable the hook.
func (a *api) events(w http.ResponseWriter, r *http.Request) {
	secret := ""
	if a.WebhookSecret != nil {
		secret = a.WebhookSecret()
	}
	if a.Events == nil || secret == "" {
		writeJSON(w, http.StatusNotFound, map[string]string{"error": codeNotFound, "error_description": "GitLab events are not enabled on this daemon (set gitlab.webhook_secret_file)"})
		return
	}
	got := sha256.Sum256([]byte(r.Header.Get("X-Gitlab-Token")))
	want := sha256.Sum256([]byte(secret))
	if subtle.ConstantTimeCompare(got[:], want[:]) != 1 {
		if a.Guard != nil {
			a.Guard.Failed(peerOf(r))
		}
		a.Logger.Warn("GitLab event refused: missing or wrong X-Gitlab-Token", "request_id", requestID(r), "peer", peerOf(r), "event", truncate(r.Header.Get("X-Gitlab-Event"), 40))
		writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "invalid_token", "error_description": "X-Gitlab-Token is missing or does not match the daemon's webhook secret"})
		return
	}
	kind := r.Header.Get("X-Gitlab-Event")
	switch kind {
	case "Job Hook", "System Hook":
	default:
		// Push Hook and the rest: acknowledged, nothing to do.
		a.Logger.Debug("GitLab event ignored", "request_id", requestID(r), "event", truncate(kind, 40))
		w.WriteHeader(http.StatusOK)
		return
	}
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/json" {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": exchange.CodeInvalidRequest, "error_description": "Content-Type must be application/json"})
		return
	}
	var ev jobHook
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxEventBytes))
	if err := dec.Decode(&ev); err != nil {
		var mbe *http.MaxBytesError
		msg := "malformed JSON body"
		if errors.As(err, &mbe) {
			msg = "body larger than " + strconv.Itoa(maxEventBytes) + " bytes"
		}
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": exchange.CodeInvalidRequest, "error_description": msg})
		return
	}
	if ev.ObjectKind != "build" {
		// A system hook of another kind (push, project_create, …).
		w.WriteHeader(http.StatusOK)
		return
	}
	if ev.BuildID <= 0 || ev.ProjectID <= 0 || ev.BuildStatus == "" {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": exchange.CodeInvalidRequest, "error_description": "a job event needs build_id, project_id and build_status"})
		return
	}
	// The event is acted on even if GitLab hangs up: its end was announced.
	err := a.Events.Event(context.WithoutCancel(r.Context()), exchange.JobEvent{
		ProjectID: strconv.FormatInt(ev.ProjectID, 10), JobID: strconv.FormatInt(ev.BuildID, 10), Status: ev.BuildStatus,
		RequestID: requestID(r),
	})
	if err != nil {
		// The poll takes the job up; GitLab's hook log shows the failure.
		a.Logger.Error("GitLab job event not handled", "request_id", requestID(r), "job_id", ev.BuildID, "status", truncate(ev.BuildStatus, 40), "error", err)
		writeJSON(w, http.StatusInternalServerError, map[string]string{"error": exchange.CodeServerError, "error_description": "the event could not be handled; the daemon's log has the details", "request_id": requestID(r)})
		return
	}
	w.WriteHeader(http.StatusOK)
}
