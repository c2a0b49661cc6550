package policy

import (
	"sync/atomic"
)

// Holder keeps the policy in force and swaps it on Reload. It is safe for
// concurrent use; Current is a single atomic load.
type Holder struct {
	p                 atomic.Pointer[Policy]
	reloads, failures atomic.Uint64
	file              string
	opts              Options
}

// NewHolder loads the policy at file and holds it.
func NewHolder(file string, opts Options) (*Holder, error) {
	p, err := Load(file, opts)
	if err != nil {
		return nil, err
	}
	h := &Holder{file: file, opts: opts}
	h.p.Store(p)
	return h, nil
}

// Current returns the policy in force.
func (h *Holder) Current() *Policy { return h.p.Load() }

// File is the policy file the holder loads.
func (h *Holder) File() string { return h.file }

// Reload loads the file again. When the new policy is invalid it returns the
// problems and the policy in force stays.
func (h *Holder) Reload() (*Policy, error) {
	p, err := Load(h.file, h.opts)
	if err != nil {
		h.failures.Add(1)
		return nil, err
	}
	h.p.Store(p)
	h.reloads.Add(1)
	return p, nil
}

// Reloads counts the reloads that took effect and those refused.
func (h *Holder) Reloads() (ok, refused uint64) { return h.reloads.Load(), h.failures.Load() }
