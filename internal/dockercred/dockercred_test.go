package dockercred

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
)

type fakeHelper struct {
	creds   map[string]Credentials
	failGet error
	stored  []Credentials
	erased  []string
	list    map[string]string
}

var _ Helper = (*fakeHelper)(nil)

func (f *fakeHelper) Get(_ context.Context, serverURL string) (Credentials, error) {
	if f.failGet != nil {
		return Credentials{}, f.failGet
	}
	c, ok := f.creds[serverURL]
	if !ok {
		return Credentials{}, fmt.Errorf("lookup %s: %w", serverURL, ErrNotFound)
	}
	return c, nil
}

func (f *fakeHelper) Store(_ context.Context, c Credentials) error {
	f.stored = append(f.stored, c)
	return nil
}

func (f *fakeHelper) Erase(_ context.Context, serverURL string) error {
	f.erased = append(f.erased, serverURL)
	return nil
}

func (f *fakeHelper) List(context.Context) (map[string]string, error) { return f.list, nil }

func TestHandle(t *testing.T) {
	reg := Credentials{ServerURL: "registry.example.com", Username: "gitlab+deploy-token-7", Secret: "gldt-s"}
	tests := []struct {
		name       string
		h          *fakeHelper
		action     string
		stdin      string
		wantOut    string
		wantStatus int
		check      func(t *testing.T, h *fakeHelper)
	}{
		{
			name:    "get",
			h:       &fakeHelper{creds: map[string]Credentials{"registry.example.com": reg}},
			action:  "get",
			stdin:   "  registry.example.com\n",
			wantOut: `{"ServerURL":"registry.example.com","Username":"gitlab+deploy-token-7","Secret":"gldt-s"}` + "\n",
		},
		{
			name:       "get not found",
			h:          &fakeHelper{},
			action:     "get",
			stdin:      "other.example.com",
			wantOut:    "credentials not found in native keychain\n",
			wantStatus: 1,
		},
		{
			name:       "get other error",
			h:          &fakeHelper{failGet: errors.New("gltoken: daemon unreachable\nsecond line")},
			action:     "get",
			stdin:      "registry.example.com",
			wantOut:    "gltoken: daemon unreachable second line\n",
			wantStatus: 1,
		},
		{
			name:       "get without URL",
			h:          &fakeHelper{},
			action:     "get",
			stdin:      " \n",
			wantOut:    "no credentials server URL\n",
			wantStatus: 1,
		},
		{
			name:    "store",
			h:       &fakeHelper{},
			action:  "store",
			stdin:   `{"ServerURL":"registry.example.com","Username":"u","Secret":"s"}`,
			wantOut: "",
			check: func(t *testing.T, h *fakeHelper) {
				if len(h.stored) != 1 || h.stored[0] != (Credentials{"registry.example.com", "u", "s"}) {
					t.Errorf("stored = %+v", h.stored)
				}
			},
		},
		{
			name:       "store without username",
			h:          &fakeHelper{},
			action:     "store",
			stdin:      `{"ServerURL":"registry.example.com","Secret":"s"}`,
			wantOut:    "no credentials username\n",
			wantStatus: 1,
		},
		{
			name:       "store without server URL",
			h:          &fakeHelper{},
			action:     "store",
			stdin:      `{"Username":"u","Secret":"s"}`,
			wantOut:    "no credentials server URL\n",
			wantStatus: 1,
		},
		{
			name:    "erase",
			h:       &fakeHelper{},
			action:  "erase",
			stdin:   "registry.example.com\n",
			wantOut: "",
			check: func(t *testing.T, h *fakeHelper) {
				if len(h.erased) != 1 || h.erased[0] != "registry.example.com" {
					t.Errorf("erased = %q", h.erased)
				}
			},
		},
		{name: "list empty", h: &fakeHelper{}, action: "list", wantOut: "{}\n"},
		{name: "list", h: &fakeHelper{list: map[string]string{"r.example.com": "u"}}, action: "list", wantOut: `{"r.example.com":"u"}` + "\n"},
		{name: "version", h: &fakeHelper{}, action: "version", wantOut: "docker-credential-gltoken (gltoken.dev/gltoken) v1.2.3\n"},
		{name: "unknown action", h: &fakeHelper{}, action: "frob", wantOut: "Unknown credential action `frob`\n", wantStatus: 1},
		{name: "input too large", h: &fakeHelper{}, action: "get", stdin: strings.Repeat("a", MaxInput+1), wantOut: ErrInputTooLarge.Error() + "\n", wantStatus: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			status := Handle(context.Background(), tt.h, tt.action, strings.NewReader(tt.stdin), &out, "docker-credential-gltoken (gltoken.dev/gltoken) v1.2.3")
			if status != tt.wantStatus {
				t.Errorf("status = %d, want %d", status, tt.wantStatus)
			}
			if out.String() != tt.wantOut {
				t.Errorf("stdout = %q, want %q", out.String(), tt.wantOut)
			}
			if tt.check != nil {
				tt.check(t, tt.h)
			}
		})
	}
}

func TestHost(t *testing.T) {
	tests := []struct {
		in, want string
		wantErr  bool
	}{
		{"registry.example.com", "registry.example.com", false},
		{"Registry.Example.com:5050", "registry.example.com:5050", false},
		{"https://registry.example.com/v2/", "registry.example.com", false},
		{"https://index.docker.io/v1/", "index.docker.io", false},
		{"https://", "", true},
		{"https://user@registry.example.com", "", true},
		{"", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := Host(tt.in)
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Fatalf("Host(%q) = %q, %v", tt.in, got, err)
			}
		})
	}
}
