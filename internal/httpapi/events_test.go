package httpapi

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"gltoken.dev/gltoken/internal/exchange"
)

type fakeEvents struct {
	mu  sync.Mutex
	got []exchange.JobEvent
}

func (f *fakeEvents) Event(_ context.Context, ev exchange.JobEvent) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.got = append(f.got, ev)
	return nil
}

const jobHookBody = `{"object_kind":"build","ref":"main","tag":false,"build_id":5001,"build_name":"test","build_stage":"test",
"build_status":"success","build_finished_at":"2026-11-27 10:00:00 UTC","pipeline_id":1001,"project_id":42,"project_name":"platform / app",
"user":null,"commit":{"id":1001},"repository":{"name":"app"},"environment":null}`

func TestGitLabEvents(t *testing.T) {
	const secret = "a-webhook-secret-of-some-length"
	tests := []struct {
		name, event, token, ctype, body string
		status                          int
		want                            []exchange.JobEvent
	}{
		{"job hook", "Job Hook", secret, "application/json", jobHookBody, 200, []exchange.JobEvent{{ProjectID: "42", JobID: "5001", Status: "success"}}},
		{"system hook with a job", "System Hook", secret, "application/json", jobHookBody, 200, []exchange.JobEvent{{ProjectID: "42", JobID: "5001", Status: "success"}}},
		{"system hook of another kind", "System Hook", secret, "application/json", `{"object_kind":"push","project_id":42}`, 200, nil},
		{"push hook is ignored", "Push Hook", secret, "application/json", `{"object_kind":"push"}`, 200, nil},
		{"missing token", "Job Hook", "", "application/json", jobHookBody, 401, nil},
		{"wrong token", "Job Hook", secret + "x", "application/json", jobHookBody, 401, nil},
		{"wrong token on a push", "Push Hook", "nope", "application/json", `{}`, 401, nil},
		{"not JSON", "Job Hook", secret, "application/json", `{"object_kind":`, 400, nil},
		{"wrong content type", "Job Hook", secret, "text/plain", jobHookBody, 400, nil},
		{"no build id", "Job Hook", secret, "application/json", `{"object_kind":"build","build_status":"success","project_id":42}`, 400, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ev := &fakeEvents{}
			h := Handler(Options{Service: &fakeService{}, Events: ev, WebhookSecret: func() string { return secret }})
			req := httptest.NewRequest(http.MethodPost, "/v1/gitlab/events", strings.NewReader(tc.body))
			req.Header.Set("X-Gitlab-Event", tc.event)
			req.Header.Set("Content-Type", tc.ctype)
			if tc.token != "" {
				req.Header.Set("X-Gitlab-Token", tc.token)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code != tc.status {
				t.Fatalf("status %d, want %d: %s", rec.Code, tc.status, rec.Body)
			}
			if strings.Contains(rec.Body.String(), secret) {
				t.Fatal("the answer shows the secret")
			}
			if len(tc.want) > 0 {
				// The revocations it causes are audited under the request's id.
				tc.want[0].RequestID = rec.Header().Get("X-Request-Id")
			}
			if len(ev.got) != len(tc.want) || (len(tc.want) > 0 && (ev.got[0] != tc.want[0] || ev.got[0].RequestID == "")) {
				t.Fatalf("events %+v, want %+v", ev.got, tc.want)
			}
		})
	}
	t.Run("not enabled", func(t *testing.T) {
		h := Handler(Options{Service: &fakeService{}})
		req := httptest.NewRequest(http.MethodPost, "/v1/gitlab/events", strings.NewReader(jobHookBody))
		req.Header.Set("X-Gitlab-Event", "Job Hook")
		req.Header.Set("X-Gitlab-Token", "")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusNotFound || !strings.Contains(rec.Body.String(), "webhook_secret_file") {
			t.Fatalf("%d %s", rec.Code, rec.Body)
		}
	})
}
