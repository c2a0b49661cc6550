package gitlabfake

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
)

func TestJobsAPI(t *testing.T) {
	f := newFixture(t)
	other := f.s.AddProject("platform/other")
	tok := f.s.IssueIDToken(Job{Project: f.project, JobID: 777, PipelineID: 70})
	if tok == "" {
		t.Fatal("no ID token")
	}
	f.s.IssueIDToken(Job{Project: other, JobID: 778})
	guest := f.s.AddUser("guest")
	f.s.AddMember(guest, "platform/app", Guest)
	guestPAT := f.s.CreatePersonalAccessToken(guest, "g", []string{"read_api"}, nil)
	stranger := f.s.AddUser("stranger")
	strangerPAT := f.s.CreatePersonalAccessToken(stranger, "s", []string{"api"}, nil)
	reader := f.s.AddUser("reader")
	f.s.AddMember(reader, "platform/app", Reporter)
	readerPAT := f.s.CreatePersonalAccessToken(reader, "r", []string{"read_api"}, nil)

	u := func(project, job string) string { return f.s.URL() + "/api/v4/projects/" + project + "/jobs/" + job }
	tests := []struct {
		name, url, token string
		status           int
		message          string
	}{
		{"maintainer by id", u(fmt.Sprint(f.project.ID), "777"), f.svcPAT, 200, ""},
		{"maintainer by path", u("platform%2Fapp", "777"), f.svcPAT, 200, ""},
		{"reporter", u("platform%2Fapp", "777"), readerPAT, 200, ""},
		{"guest, public pipelines", u("platform%2Fapp", "777"), guestPAT, 200, ""},
		{"job of another project", u("platform%2Fapp", "778"), f.svcPAT, 404, "404 Not found"},
		{"unknown job", u("platform%2Fapp", "9999"), f.svcPAT, 404, "404 Not found"},
		{"invisible project", u("platform%2Fapp", "777"), strangerPAT, 404, "404 Project Not Found"},
		{"anonymous", u("platform%2Fapp", "777"), "", 401, "401 Unauthorized"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res := doRaw(t, http.MethodGet, tc.url, tc.token, "", "")
			if res.status != tc.status {
				t.Fatalf("status %d, want %d: %s", res.status, tc.status, res.body)
			}
			if tc.message != "" {
				if m := res.json(t)["message"]; m != tc.message {
					t.Fatalf("message %v, want %q", m, tc.message)
				}
				return
			}
			j := res.json(t)
			if j["status"] != "running" || j["id"] != float64(777) || j["pipeline"].(map[string]any)["id"] != float64(70) {
				t.Fatalf("job = %v", j)
			}
		})
	}
	f.s.SetPrivatePipelines("platform/app", true)
	if res := doRaw(t, http.MethodGet, u("platform%2Fapp", "777"), guestPAT, "", ""); res.status != 403 {
		t.Fatalf("guest with private pipelines: %d %s, want 403", res.status, res.body)
	}

	// client-go reads GitLab's shape.
	job, _, err := newClient(t, f.s, f.svcPAT).Jobs.GetJob(f.project.ID, 777)
	if err != nil || job.Status != "running" || job.Pipeline.ID != 70 {
		t.Fatalf("client-go GetJob = %+v, %v", job, err)
	}
	if err := f.s.EndJob(777, "success"); err != nil {
		t.Fatal(err)
	}
	if job, _, err = newClient(t, f.s, f.svcPAT).Jobs.GetJob(f.project.ID, 777); err != nil || job.Status != "success" || job.FinishedAt == nil {
		t.Fatalf("after EndJob: %+v, %v", job, err)
	}
	for _, bad := range []struct {
		id     int64
		status string
	}{{777, "failed"}, {9999, "success"}, {778, "running"}} {
		if err := f.s.EndJob(bad.id, bad.status); err == nil {
			t.Errorf("EndJob(%d, %s) succeeded", bad.id, bad.status)
		}
	}
}

func TestJobHookDelivery(t *testing.T) {
	f := newFixture(t)
	type got struct {
		header http.Header
		body   map[string]any
	}
	var mu sync.Mutex
	var hits []got
	recv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		var m map[string]any
		_ = json.Unmarshal(b, &m)
		mu.Lock()
		hits = append(hits, got{r.Header.Clone(), m})
		mu.Unlock()
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(recv.Close)
	f.s.AddWebhook(Webhook{URL: recv.URL + "/project", Token: "s3cret"})
	f.s.AddWebhook(Webhook{URL: recv.URL + "/system", System: true})
	f.s.IssueIDToken(Job{Project: f.project, JobID: 900, PipelineID: 90})
	if err := f.s.EndJob(900, "failed"); err != nil {
		t.Fatal(err)
	}
	f.s.WaitHooks()
	if len(hits) != 2 {
		t.Fatalf("%d deliveries, want 2", len(hits))
	}
	for _, h := range hits {
		system := h.header.Get("X-Gitlab-Token") == ""
		wantEvent := "Job Hook"
		if system {
			wantEvent = "System Hook"
		}
		if ev := h.header.Get("X-Gitlab-Event"); ev != wantEvent {
			t.Errorf("X-Gitlab-Event %q, want %q", ev, wantEvent)
		}
		if !system && h.header.Get("X-Gitlab-Token") != "s3cret" {
			t.Errorf("X-Gitlab-Token %q", h.header.Get("X-Gitlab-Token"))
		}
		if h.header.Get("Content-Type") != "application/json" || h.header.Get("X-Gitlab-Instance") != f.s.URL() {
			t.Errorf("headers %v", h.header)
		}
		b := h.body
		if b["object_kind"] != "build" || b["build_id"] != float64(900) || b["build_status"] != "failed" ||
			b["project_id"] != float64(f.project.ID) || b["pipeline_id"] != float64(90) || b["build_finished_at"] == nil {
			t.Errorf("payload %v", b)
		}
	}
	ds := f.s.HookDeliveries()
	if len(ds) != 2 || ds[0].Code != 200 || ds[0].JobID != 900 {
		t.Fatalf("deliveries %+v", ds)
	}
}
