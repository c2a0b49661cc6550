// Package syncbuf provides Buffer, a bytes.Buffer that may be written and
// read at once: a child process's output or a logger's sink, read by a test
// or by the load driver while it is still being written.
package syncbuf

import (
	"bufio"
	"bytes"
	"strings"
	"sync"
)

// Buffer is safe for concurrent use. The zero value is an empty buffer.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write appends p.
func (s *Buffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String returns everything written so far.
func (s *Buffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Lines returns what was written so far split into lines, without their
// line endings. A line may be up to 1 MiB long.
func (s *Buffer) Lines() []string {
	var out []string
	sc := bufio.NewScanner(strings.NewReader(s.String()))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		out = append(out, sc.Text())
	}
	return out
}
