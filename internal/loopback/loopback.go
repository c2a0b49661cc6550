// Package loopback tells whether a host names the local machine only, the
// one test behind every "plain http only to loopback" rule of gltoken (the
// daemon's listener and configuration check, the helper's daemon URL, the
// JWKS URL).
package loopback

import (
	"net"
	"net/netip"
	"strings"
)

// Host reports whether host — a hostname or an IP literal, without a port,
// as url.URL.Hostname returns it — is loopback: "localhost" (in any case),
// an IPv4 address in 127.0.0.0/8, or ::1. It parses the address: a name
// that merely starts with "127." (127.attacker.example) is not loopback.
func Host(host string) bool {
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip, err := netip.ParseAddr(host)
	if err != nil || ip.Zone() != "" {
		return false
	}
	return ip.Unmap().IsLoopback()
}

// Remote reports whether addr — a peer address as http.Request.RemoteAddr
// gives it, host:port — is a loopback address (see Host).
func Remote(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	return err == nil && Host(host)
}
