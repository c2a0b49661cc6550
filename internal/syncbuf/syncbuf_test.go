package syncbuf

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
)

func TestBufferConcurrentWritesAndReads(t *testing.T) {
	var b Buffer
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := range 100 {
				fmt.Fprintf(&b, "writer %d line %d\n", w, i)
				_ = b.String()
			}
		})
	}
	wg.Wait()
	lines := b.Lines()
	if len(lines) != 400 {
		t.Fatalf("%d lines, want 400", len(lines))
	}
	for w := range 4 {
		for i := range 100 {
			if want := fmt.Sprintf("writer %d line %d", w, i); !slices.Contains(lines, want) {
				t.Fatalf("line %q missing or torn", want)
			}
		}
	}
}

func TestLines(t *testing.T) {
	tests := []struct {
		name, in string
		want     []string
	}{
		{"empty", "", nil},
		{"no final newline", "a\nb", []string{"a", "b"}},
		{"crlf", "a\r\nb\r\n", []string{"a", "b"}},
		{"long line", strings.Repeat("x", 100_000) + "\n", []string{strings.Repeat("x", 100_000)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b Buffer
			_, _ = b.Write([]byte(tt.in))
			if got := b.Lines(); !slices.Equal(got, tt.want) {
				t.Fatalf("Lines() = %q, want %q", got, tt.want)
			}
		})
	}
}
