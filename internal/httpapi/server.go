package httpapi

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"

	"gltoken.dev/gltoken/internal/loopback"
)

// TLSFiles names the PEM files for TCP listeners.
type TLSFiles struct {
	CertFile     string
	KeyFile      string
	ClientCAFile string // when set, clients must present a certificate it signed
}

// Server runs the handler on every listen address.
type Server struct {
	handler   http.Handler
	log       *slog.Logger
	servers   []*http.Server
	lns       []net.Listener
	activated bool // the listeners came from systemd
}

// Listen opens every address: "unix:///path" (socket mode 0660, a stale
// socket file is replaced), "tcp://host:port" (TLS required unless the host
// is loopback), or "systemd:" for the sockets systemd passes to a
// socket-activated service (LISTEN_FDS; TLS applies to TCP ones). Nothing is
// served until Serve.
func Listen(addrs []string, tlsFiles *TLSFiles, h http.Handler, log *slog.Logger) (*Server, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{handler: h, log: log}
	var tlsCfg *tls.Config
	if tlsFiles != nil && tlsFiles.CertFile != "" {
		var err error
		if tlsCfg, err = loadTLS(*tlsFiles); err != nil {
			return nil, err
		}
	}
	for _, a := range addrs {
		if a == "systemd:" {
			lns, err := systemdListeners(tlsCfg)
			if err != nil {
				s.closeListeners()
				return nil, err
			}
			s.lns = append(s.lns, lns...)
			s.activated = true
			continue
		}
		ln, err := listen(a, tlsCfg)
		if err != nil {
			s.closeListeners()
			return nil, err
		}
		s.lns = append(s.lns, ln)
	}
	return s, nil
}

// systemdListeners takes the sockets of systemd's socket activation
// (sd_listen_fds: LISTEN_PID names this process, LISTEN_FDS counts the
// descriptors from 3). The socket unit owns the Unix socket's path and mode,
// so it outlives restarts of the daemon.
func systemdListeners(tlsCfg *tls.Config) ([]net.Listener, error) {
	if os.Getenv("LISTEN_PID") != strconv.Itoa(os.Getpid()) {
		return nil, errors.New("listen systemd: no sockets passed by systemd (LISTEN_PID is not this process); run from a .socket unit")
	}
	n, err := strconv.Atoi(os.Getenv("LISTEN_FDS"))
	if err != nil || n < 1 {
		return nil, errors.New("listen systemd: LISTEN_FDS names no socket")
	}
	os.Unsetenv("LISTEN_PID")
	os.Unsetenv("LISTEN_FDS")
	os.Unsetenv("LISTEN_FDNAMES")
	var lns []net.Listener
	for fd := 3; fd < 3+n; fd++ {
		syscall.CloseOnExec(fd)
		f := os.NewFile(uintptr(fd), "systemd-socket")
		ln, err := net.FileListener(f)
		f.Close()
		if err != nil {
			for _, l := range lns {
				l.Close()
			}
			return nil, fmt.Errorf("listen systemd: descriptor %d: %w", fd, err)
		}
		if tcp, ok := ln.Addr().(*net.TCPAddr); ok {
			switch {
			case tlsCfg != nil:
				ln = tls.NewListener(ln, tlsCfg)
			case !tcp.IP.IsLoopback():
				ln.Close()
				return nil, fmt.Errorf("listen systemd: TCP socket %s is not loopback, so TLS is required (set tls.cert_file and tls.key_file)", tcp)
			}
		}
		lns = append(lns, ln)
	}
	return lns, nil
}

func listen(addr string, tlsCfg *tls.Config) (net.Listener, error) {
	u, err := url.Parse(addr)
	if err != nil {
		return nil, fmt.Errorf("listen %q: %w", addr, err)
	}
	switch u.Scheme {
	case "unix":
		path := u.Path
		if path == "" {
			return nil, fmt.Errorf("listen %q: no socket path", addr)
		}
		if fi, err := os.Lstat(path); err == nil {
			if fi.Mode()&os.ModeSocket == 0 {
				return nil, fmt.Errorf("listen %s: exists and is not a socket", path)
			}
			// A socket left by a process that died: replace it, unless someone answers on it.
			if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
				c.Close()
				return nil, fmt.Errorf("listen %s: another daemon is serving on it", path)
			}
			_ = os.Remove(path)
		}
		ln, err := net.Listen("unix", path)
		if err != nil {
			return nil, fmt.Errorf("listen %s: %w", path, err)
		}
		if err := os.Chmod(path, 0o660); err != nil {
			ln.Close()
			return nil, fmt.Errorf("chmod %s: %w", path, err)
		}
		return ln, nil
	case "tcp":
		host := u.Hostname()
		if tlsCfg == nil && !loopback.Host(host) {
			return nil, fmt.Errorf("listen %s: TLS is required on a non-loopback address (set tls.cert_file and tls.key_file)", addr)
		}
		ln, err := net.Listen("tcp", u.Host)
		if err != nil {
			return nil, fmt.Errorf("listen %s: %w", addr, err)
		}
		if tlsCfg != nil {
			return tls.NewListener(ln, tlsCfg), nil
		}
		return ln, nil
	}
	return nil, fmt.Errorf("listen %q: scheme must be unix:// or tcp://", addr)
}

func loadTLS(f TLSFiles) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(f.CertFile, f.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("tls: %w", err)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if f.ClientCAFile != "" {
		pem, err := os.ReadFile(f.ClientCAFile)
		if err != nil {
			return nil, fmt.Errorf("tls client CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("tls client CA %s: no certificate found", f.ClientCAFile)
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}

// Addrs are the bound addresses (useful with port 0).
func (s *Server) Addrs() []net.Addr {
	out := make([]net.Addr, len(s.lns))
	for i, ln := range s.lns {
		out[i] = ln.Addr()
	}
	return out
}

// Serve serves until ctx ends, then shuts down gracefully within grace.
func (s *Server) Serve(ctx context.Context, grace time.Duration) error {
	errc := make(chan error, len(s.lns))
	for _, ln := range s.lns {
		srv := &http.Server{
			Handler:           s.handler,
			ReadHeaderTimeout: 5 * time.Second,
			ReadTimeout:       15 * time.Second,
			WriteTimeout:      90 * time.Second,
			IdleTimeout:       60 * time.Second,
			MaxHeaderBytes:    16 << 10,
			ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
			ConnContext:       connContext,
		}
		s.servers = append(s.servers, srv)
		go func(ln net.Listener) {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- err
			}
		}(ln)
	}
	select {
	case <-ctx.Done():
	case err := <-errc:
		s.shutdown(grace)
		return err
	}
	return s.shutdown(grace)
}

func (s *Server) shutdown(grace time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	var wg sync.WaitGroup
	errs := make([]error, len(s.servers))
	for i, srv := range s.servers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = srv.Shutdown(ctx)
		}()
	}
	wg.Wait()
	s.closeListeners()
	return errors.Join(errs...)
}

func (s *Server) closeListeners() {
	for _, ln := range s.lns {
		if ul, ok := ln.(*net.UnixListener); ok {
			// A socket systemd passed stays: its unit owns the path.
			ul.SetUnlinkOnClose(!s.activated)
		}
		ln.Close()
	}
}

type peerKey struct{}

// connContext records who is on the other end: the uid and pid of a Unix
// socket peer (SO_PEERCRED), the address of a TCP one.
func connContext(ctx context.Context, c net.Conn) context.Context {
	peer := c.RemoteAddr().String()
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	if uc, ok := c.(*net.UnixConn); ok {
		peer = "unix"
		if raw, err := uc.SyscallConn(); err == nil {
			_ = raw.Control(func(fd uintptr) {
				if cred, err := syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED); err == nil {
					peer = "uid=" + strconv.Itoa(int(cred.Uid)) + " pid=" + strconv.Itoa(int(cred.Pid))
				}
			})
		}
	}
	return context.WithValue(ctx, peerKey{}, peer)
}

func peerOf(r *http.Request) string {
	if p, ok := r.Context().Value(peerKey{}).(string); ok {
		if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
			return p + " cn=" + r.TLS.PeerCertificates[0].Subject.CommonName
		}
		return p
	}
	return r.RemoteAddr
}
