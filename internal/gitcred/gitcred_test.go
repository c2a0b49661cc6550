package gitcred

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestRead(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want *Request
	}{
		{
			name: "git get with useHttpPath",
			in:   "protocol=https\nhost=gitlab.example.com\npath=platform/lib.git\n\n",
			want: &Request{Protocol: "https", Host: "gitlab.example.com", Path: "platform/lib.git"},
		},
		{
			name: "EOF without blank line",
			in:   "protocol=https\nhost=gitlab.example.com:8443",
			want: &Request{Protocol: "https", Host: "gitlab.example.com:8443"},
		},
		{
			name: "empty input",
			in:   "",
			want: &Request{},
		},
		{
			name: "stops at the blank line",
			in:   "protocol=https\n\nhost=ignored\n",
			want: &Request{Protocol: "https"},
		},
		{
			name: "CRLF lines",
			in:   "protocol=https\r\nhost=h\r\n\r\nhost=ignored\n",
			want: &Request{Protocol: "https", Host: "h"},
		},
		{
			name: "erase carries password and expiry",
			in:   "protocol=https\nhost=h\npath=p.git\nusername=u\npassword=gldt-x=y\npassword_expiry_utc=1700000000\noauth_refresh_token=r\n",
			want: &Request{Protocol: "https", Host: "h", Path: "p.git", Username: "u", Password: "gldt-x=y", PasswordExpiryUTC: "1700000000", OAuthRefreshToken: "r"},
		},
		{
			name: "multi-valued keys and unknown keys",
			in:   "capability[]=authtype\ncapability[]=state\nwwwauth[]=Basic realm=\"GitLab\"\nfuture=1\nlist[]=a\nlist[]=b\n",
			want: &Request{
				Capability: []string{"authtype", "state"},
				WWWAuth:    []string{`Basic realm="GitLab"`},
				Extra:      map[string][]string{"future": {"1"}, "list[]": {"a", "b"}},
			},
		},
		{
			name: "empty key[] resets the list",
			in:   "wwwauth[]=Basic\nwwwauth[]=\nwwwauth[]=Bearer\ncapability[]=x\ncapability[]=\n",
			want: &Request{WWWAuth: []string{"Bearer"}},
		},
		{
			name: "last value of a single key wins",
			in:   "host=a\nhost=b\n",
			want: &Request{Host: "b"},
		},
		{
			name: "url kept raw",
			in:   "url=https://h/p.git\n",
			want: &Request{URL: "https://h/p.git"},
		},
		{
			name: "empty values",
			in:   "username=\npassword=\n",
			want: &Request{},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Read(strings.NewReader(tt.in))
			if err != nil {
				t.Fatalf("Read: %v", err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Read = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestReadErrors(t *testing.T) {
	maxLine := "path=" + strings.Repeat("a", MaxLine-len("path="))
	tests := []struct {
		name string
		in   string
		want error // nil: must succeed
	}{
		{"line of exactly 65535 bytes", maxLine + "\n", nil},
		{"line of exactly 65535 bytes with CRLF", maxLine + "\r\n", nil},
		{"line of exactly 65535 bytes at EOF", maxLine, nil},
		{"line of 65536 bytes", maxLine + "a\n", ErrLineTooLong},
		{"line of 65536 bytes at EOF", maxLine + "a", ErrLineTooLong},
		{"huge line", "path=" + strings.Repeat("a", 3*MaxLine), ErrLineTooLong},
		{"no equals sign", "protocol=https\nbogus\n", ErrMalformed},
		{"NUL byte", "host=a\x00b\n", ErrMalformed},
		{"total input limit", strings.Repeat("k="+strings.Repeat("v", 1000)+"\n", MaxInput/1000+1), ErrInputTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Read(strings.NewReader(tt.in))
			if tt.want == nil {
				if err != nil {
					t.Fatalf("Read: %v", err)
				}
				return
			}
			if !errors.Is(err, tt.want) {
				t.Fatalf("Read error = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestReadStopsAtBlankLineBeforeLimit(t *testing.T) {
	// What follows the blank line is not git's request and must not count.
	in := "host=h\n\n" + strings.Repeat("x", 2*MaxInput)
	got, err := Read(strings.NewReader(in))
	if err != nil {
		t.Fatalf("Read: %v", err)
	}
	if got.Host != "h" {
		t.Fatalf("Host = %q", got.Host)
	}
}

func TestResource(t *testing.T) {
	tests := []struct {
		name    string
		req     Request
		want    string
		wantErr error
	}{
		{"repository", Request{Protocol: "https", Host: "gitlab.example.com", Path: "platform/lib.git"}, "https://gitlab.example.com/platform/lib.git", nil},
		{"port and subgroups kept", Request{Protocol: "https", Host: "gitlab.example.com:8443", Path: "a/b/c/d.git"}, "https://gitlab.example.com:8443/a/b/c/d.git", nil},
		{"without .git", Request{Protocol: "https", Host: "h", Path: "g/p"}, "https://h/g/p", nil},
		{"leading slash tolerated", Request{Protocol: "https", Host: "h", Path: "/g/p.git"}, "https://h/g/p.git", nil},
		{"trailing slash kept", Request{Protocol: "https", Host: "h", Path: "g/p/"}, "https://h/g/p/", nil},
		{"from url", Request{URL: "https://h/g/p.git"}, "https://h/g/p.git", nil},
		{"git-lfs endpoint: the repository", Request{Protocol: "https", Host: "h", Path: "g/sub/p.git/info/lfs"}, "https://h/g/sub/p.git", nil},
		{"git-lfs endpoint from url", Request{URL: "https://h/g/p.git/info/lfs"}, "https://h/g/p.git", nil},
		{"no path", Request{Protocol: "https", Host: "h"}, "", ErrNoPath},
		{"empty path", Request{Protocol: "https", Host: "h", Path: "/"}, "", ErrNoPath},
		{"url without path", Request{URL: "https://h"}, "", ErrNoPath},
		{"no host", Request{Protocol: "https", Path: "g/p"}, "", ErrIncomplete},
		{"no protocol", Request{Host: "h", Path: "g/p"}, "", ErrIncomplete},
		{"host with slash", Request{Protocol: "https", Host: "evil.example/x", Path: "g/p"}, "", ErrIncomplete},
		{"host with userinfo", Request{Protocol: "https", Host: "a@evil.example", Path: "g/p"}, "", ErrIncomplete},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.req.Resource()
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("Resource() error = %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("Resource() = %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}

func TestWrite(t *testing.T) {
	exp := time.Unix(1700003600, 0)
	tests := []struct {
		name    string
		c       Credential
		want    string
		wantErr error
	}{
		{"full", Credential{Username: "gitlab+deploy-token-42", Password: "gldt-abc", PasswordExpiry: exp}, "username=gitlab+deploy-token-42\npassword=gldt-abc\npassword_expiry_utc=1700003600\n", nil},
		{"no expiry", Credential{Username: "u", Password: "p"}, "username=u\npassword=p\n", nil},
		{"expiry in another zone is still unix seconds", Credential{Username: "u", Password: "p", PasswordExpiry: exp.In(time.FixedZone("X", 5*3600))}, "username=u\npassword=p\npassword_expiry_utc=1700003600\n", nil},
		{"username always printed", Credential{Password: "p"}, "username=\npassword=p\n", nil},
		{"quit", Credential{Quit: true}, "quit=true\n", nil},
		{"LF in password", Credential{Username: "u", Password: "p\nhost=evil"}, "", ErrUnsafeValue},
		{"CR in password", Credential{Username: "u", Password: "p\r"}, "", ErrUnsafeValue},
		{"NUL in username", Credential{Username: "u\x00", Password: "p"}, "", ErrUnsafeValue},
		{"LF in username", Credential{Username: "u\n", Password: "p"}, "", ErrUnsafeValue},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b bytes.Buffer
			err := Write(&b, tt.c)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("Write error = %v, want %v", err, tt.wantErr)
				}
				if b.Len() != 0 {
					t.Fatalf("Write wrote %q on error", b.String())
				}
				if strings.Contains(err.Error(), tt.c.Password) && tt.c.Password != "" {
					t.Fatalf("error quotes the password: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Write: %v", err)
			}
			if b.String() != tt.want {
				t.Fatalf("Write = %q, want %q", b.String(), tt.want)
			}
		})
	}
}

func TestWriteReadRoundTrip(t *testing.T) {
	c := Credential{Username: "project_1_bot_x", Password: "glpat-a=b c", PasswordExpiry: time.Unix(1800000000, 0)}
	var b bytes.Buffer
	if err := Write(&b, c); err != nil {
		t.Fatal(err)
	}
	r, err := Read(&b)
	if err != nil {
		t.Fatal(err)
	}
	if r.Username != c.Username || r.Password != c.Password || r.PasswordExpiryUTC != "1800000000" {
		t.Fatalf("round trip = %+v", r)
	}
}

func FuzzRead(f *testing.F) {
	f.Add("protocol=https\nhost=gitlab.example.com\npath=g/p.git\n\n", "u", "p")
	f.Add("wwwauth[]=Basic\nwwwauth[]=\ncapability[]=authtype\n", "", "gldt-x")
	f.Add("bogus\n", "a\nb", "c\r")
	f.Add("url=https://h/p\r\n", "x=y", "==")
	f.Fuzz(func(t *testing.T, in, user, pass string) {
		if r, err := Read(strings.NewReader(in)); err == nil {
			_, _ = r.Resource() // must not panic
		}
		var b bytes.Buffer
		err := Write(&b, Credential{Username: user, Password: pass})
		if err != nil {
			if b.Len() != 0 {
				t.Fatalf("Write wrote %q and failed", b.String())
			}
			if !errors.Is(err, ErrUnsafeValue) {
				t.Fatalf("Write: %v", err)
			}
			return
		}
		if (user == "" && pass == "") || len(user) > MaxLine/2 || len(pass) > MaxLine/2 {
			return
		}
		r, err := Read(&b)
		if err != nil {
			t.Fatalf("Read of Write's output %q: %v", b.String(), err)
		}
		if r.Username != user || r.Password != pass {
			t.Fatalf("round trip: got %q/%q, want %q/%q", r.Username, r.Password, user, pass)
		}
	})
}
