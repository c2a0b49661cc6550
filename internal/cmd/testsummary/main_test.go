package main

import (
	"strings"
	"testing"
)

// TestSummaryListsSkips feeds the summariser what `go test -json` prints for a
// package with a passing, a skipped and a failing test, and a package that
// passes: the failure's output and the ok/FAIL lines are shown, the passing
// test's output is not, and the last line names the skip and its reason.
func TestSummaryListsSkips(t *testing.T) {
	in := strings.Join([]string{
		`{"Action":"start","Package":"gltoken.dev/gltoken/internal/a"}`,
		`{"Action":"run","Package":"gltoken.dev/gltoken/internal/a","Test":"TestPass"}`,
		`{"Action":"output","Package":"gltoken.dev/gltoken/internal/a","Test":"TestPass","Output":"=== RUN   TestPass\n"}`,
		`{"Action":"output","Package":"gltoken.dev/gltoken/internal/a","Test":"TestPass","Output":"    a_test.go:5: quiet detail\n"}`,
		`{"Action":"pass","Package":"gltoken.dev/gltoken/internal/a","Test":"TestPass"}`,
		`{"Action":"run","Package":"gltoken.dev/gltoken/internal/a","Test":"TestPG"}`,
		`{"Action":"output","Package":"gltoken.dev/gltoken/internal/a","Test":"TestPG","Output":"=== RUN   TestPG\n"}`,
		`{"Action":"output","Package":"gltoken.dev/gltoken/internal/a","Test":"TestPG","Output":"    a_test.go:9: GLTOKEN_TEST_POSTGRES_DSN not set\n"}`,
		`{"Action":"output","Package":"gltoken.dev/gltoken/internal/a","Test":"TestPG","Output":"--- SKIP: TestPG (0.00s)\n"}`,
		`{"Action":"skip","Package":"gltoken.dev/gltoken/internal/a","Test":"TestPG"}`,
		`{"Action":"run","Package":"gltoken.dev/gltoken/internal/a","Test":"TestBad"}`,
		`{"Action":"output","Package":"gltoken.dev/gltoken/internal/a","Test":"TestBad","Output":"=== RUN   TestBad\n"}`,
		`{"Action":"output","Package":"gltoken.dev/gltoken/internal/a","Test":"TestBad","Output":"    a_test.go:12: got 1, want 2\n"}`,
		`{"Action":"output","Package":"gltoken.dev/gltoken/internal/a","Test":"TestBad","Output":"--- FAIL: TestBad (0.00s)\n"}`,
		`{"Action":"fail","Package":"gltoken.dev/gltoken/internal/a","Test":"TestBad"}`,
		`{"Action":"output","Package":"gltoken.dev/gltoken/internal/a","Output":"FAIL\n"}`,
		`{"Action":"output","Package":"gltoken.dev/gltoken/internal/a","Output":"FAIL\tgltoken.dev/gltoken/internal/a\t0.01s\n"}`,
		`{"Action":"fail","Package":"gltoken.dev/gltoken/internal/a"}`,
		`{"Action":"output","Package":"gltoken.dev/gltoken/internal/b","Output":"ok  \tgltoken.dev/gltoken/internal/b\t0.02s\n"}`,
		`{"Action":"pass","Package":"gltoken.dev/gltoken/internal/b"}`,
	}, "\n") + "\n"
	var out strings.Builder
	if code := run(strings.NewReader(in), &out); code != 1 {
		t.Errorf("exit code %d, want 1 (a test failed)", code)
	}
	want := "=== RUN   TestBad\n" +
		"    a_test.go:12: got 1, want 2\n" +
		"--- FAIL: TestBad (0.00s)\n" +
		"FAIL\tgltoken.dev/gltoken/internal/a\t0.01s\n" +
		"ok  \tgltoken.dev/gltoken/internal/b\t0.02s\n" +
		"skipped: 1 test(s): internal/a TestPG (GLTOKEN_TEST_POSTGRES_DSN not set)\n"
	if got := out.String(); got != want {
		t.Errorf("output:\n%s\nwant:\n%s", got, want)
	}
}

// TestSummaryNoSkips: a clean run exits 0 and says nothing was skipped.
func TestSummaryNoSkips(t *testing.T) {
	in := `{"Action":"output","Package":"p/internal/b","Output":"ok  \tp/internal/b\t0.02s\n"}` + "\n" +
		`{"Action":"pass","Package":"p/internal/b"}` + "\n"
	var out strings.Builder
	if code := run(strings.NewReader(in), &out); code != 0 {
		t.Errorf("exit code %d, want 0", code)
	}
	if got, want := out.String(), "ok  \tp/internal/b\t0.02s\nskipped: none\n"; got != want {
		t.Errorf("output %q, want %q", got, want)
	}
}
