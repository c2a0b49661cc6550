//go:build !gltoken_pprof

package main

import "io"

// profiling does nothing: the shipped exchanged serves no profiles (see
// pprof.go, built only with -tags gltoken_pprof).
func profiling(io.Writer) (stop func()) { return func() {} }
