// Command testsummary reads `go test -json` on stdin and prints what a person
// wants to see: each package's ok/FAIL line, the whole output of every test
// that failed, and at the end one line listing the tests that were skipped and
// why (the message they passed to t.Skip). `make test` pipes into it; it exits
// 1 when a test or a build failed, so the pipeline fails without pipefail too.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
)

func main() { os.Exit(run(os.Stdin, os.Stdout)) }

// event is one line of test2json's output.
type event struct {
	Action  string
	Package string
	Test    string
	Output  string
	// ImportPath marks build output (Go 1.24+: build-output, build-fail).
	ImportPath string
}

type key struct{ pkg, test string }

type skip struct{ pkg, test, reason string }

func run(in io.Reader, out io.Writer) int {
	w := bufio.NewWriter(out)
	defer w.Flush()
	buf := map[key][]string{} // output of each running test (and package)
	var skips []skip
	failed := false
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		line := sc.Bytes()
		var e event
		if err := json.Unmarshal(line, &e); err != nil || e.Action == "" {
			fmt.Fprintln(w, string(line)) // not test2json: pass it through
			continue
		}
		k := key{e.Package, e.Test}
		switch e.Action {
		case "build-output":
			fmt.Fprint(w, e.Output)
		case "build-fail":
			failed = true
		case "output":
			if e.Test == "" {
				// Package level: keep "ok"/"FAIL"/"?" lines and anything
				// printed outside a test (TestMain, panics).
				if o := strings.TrimSpace(e.Output); o == "PASS" || o == "FAIL" || strings.HasPrefix(o, "=== ") || strings.HasPrefix(o, "--- ") {
					continue
				}
				fmt.Fprint(w, e.Output)
				continue
			}
			buf[k] = append(buf[k], e.Output)
		case "fail":
			failed = true
			if e.Test != "" {
				for _, o := range buf[k] {
					fmt.Fprint(w, o)
				}
			}
			delete(buf, k)
		case "skip":
			if e.Test != "" {
				skips = append(skips, skip{e.Package, e.Test, reason(buf[k])})
			}
			delete(buf, k)
		case "pass":
			delete(buf, k)
		}
		w.Flush()
	}
	if err := sc.Err(); err != nil {
		fmt.Fprintf(w, "testsummary: reading go test -json: %v\n", err)
		failed = true
	}
	sort.Slice(skips, func(i, j int) bool {
		if skips[i].pkg != skips[j].pkg {
			return skips[i].pkg < skips[j].pkg
		}
		return skips[i].test < skips[j].test
	})
	if len(skips) == 0 {
		fmt.Fprintln(w, "skipped: none")
	} else {
		parts := make([]string, len(skips))
		for i, s := range skips {
			parts[i] = fmt.Sprintf("%s %s (%s)", shortPkg(s.pkg), s.test, s.reason)
		}
		fmt.Fprintf(w, "skipped: %d test(s): %s\n", len(skips), strings.Join(parts, "; "))
	}
	if failed {
		return 1
	}
	return 0
}

// reason is what a skipped test printed, without the RUN/SKIP frame lines and
// the file:line prefix.
func reason(lines []string) string {
	var msg []string
	for _, l := range lines {
		t := strings.TrimSpace(l)
		if t == "" || strings.HasPrefix(t, "=== ") || strings.HasPrefix(t, "--- ") {
			continue
		}
		if i := strings.Index(t, ".go:"); i > 0 {
			if j := strings.Index(t[i:], ": "); j > 0 {
				t = t[i+j+2:]
			}
		}
		msg = append(msg, t)
	}
	if len(msg) == 0 {
		return "no reason given"
	}
	return strings.Join(msg, " ")
}

func shortPkg(p string) string {
	if i := strings.Index(p, "/internal/"); i >= 0 {
		return p[i+1:]
	}
	return p
}
