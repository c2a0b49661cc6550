//go:build gltoken_pprof

package main

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"runtime"
	rtpprof "runtime/pprof"
	"sync"
	"time"
)

// profiling serves Go's profiles on the Unix socket named by
// GLTOKEN_PPROF_SOCKET, for the load driver (internal/cmd/loadgen -pprof).
// It exists only in a binary built with -tags gltoken_pprof: the shipped
// exchanged has no profiling endpoint. Besides net/http/pprof's routes,
// POST /cpu/start and POST /cpu/stop bracket a CPU profile (the stop answers
// it), so that a profile covers exactly one phase of a load run.
func profiling(stderr io.Writer) (stop func()) {
	sock := os.Getenv("GLTOKEN_PPROF_SOCKET")
	if sock == "" {
		return func() {}
	}
	ln, err := net.Listen("unix", sock)
	if err != nil {
		fmt.Fprintln(stderr, "exchanged: profiling:", err)
		return func() {}
	}
	// Contention, sampled: a blocked wait of 10µs or more and one mutex
	// contention in 10.
	runtime.SetBlockProfileRate(10_000)
	runtime.SetMutexProfileFraction(10)
	var (
		mu  sync.Mutex
		buf *bytes.Buffer
	)
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("POST /cpu/start", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		buf = &bytes.Buffer{}
		if err := rtpprof.StartCPUProfile(buf); err != nil {
			http.Error(w, err.Error(), http.StatusConflict)
		}
	})
	mux.HandleFunc("POST /cpu/stop", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		rtpprof.StopCPUProfile()
		if buf != nil {
			_, _ = w.Write(buf.Bytes())
		}
		buf = nil
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	return func() { _ = srv.Close() }
}
