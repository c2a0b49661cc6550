package loopback

import "testing"

func TestHost(t *testing.T) {
	for _, tt := range []struct {
		host string
		want bool
	}{
		{"localhost", true},
		{"LocalHost", true},
		{"127.0.0.1", true},
		{"127.1.2.3", true},
		{"::1", true},
		{"[::1]", true},
		{"::ffff:127.0.0.1", true},
		// Names that only look local.
		{"127.attacker.example", false},
		{"127.0.0.1.attacker.example", false},
		{"localhost.attacker.example", false},
		{"127.0.0.1:8080", false}, // a port is not a host
		{"0.0.0.0", false},
		{"::", false},
		{"128.0.0.1", false},
		{"10.0.0.1", false},
		{"gitlab.example.com", false},
		{"fe80::1%lo", false},
		{"", false},
	} {
		if got := Host(tt.host); got != tt.want {
			t.Errorf("Host(%q) = %v, want %v", tt.host, got, tt.want)
		}
	}
}

func TestRemote(t *testing.T) {
	for _, tt := range []struct {
		addr string
		want bool
	}{
		{"127.0.0.1:41234", true},
		{"[::1]:41234", true},
		{"127.0.0.1", false}, // RemoteAddr always has a port
		{"10.1.2.3:41234", false},
		{"[fe80::1%lo]:41234", false},
		{"", false},
	} {
		if got := Remote(tt.addr); got != tt.want {
			t.Errorf("Remote(%q) = %v, want %v", tt.addr, got, tt.want)
		}
	}
}
