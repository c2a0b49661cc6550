// Package periodic runs the daemon's background passes: Run calls a pass
// every interval until its context ends. The job poll and the escape sweep
// run on it, so they start, tick and stop alike.
package periodic

import (
	"context"
	"time"
)

// Run calls pass every interval until ctx ends, the first time one
// interval after it is called (a pass at start-up is the caller's to make).
// A pass that takes longer than interval delays the next; ticks missed
// meanwhile are dropped, so passes never pile up. Run returns when ctx ends,
// never during a pass.
func Run(ctx context.Context, interval time.Duration, pass func(ctx context.Context)) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			pass(ctx)
		}
	}
}
