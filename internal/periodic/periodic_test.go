package periodic

import (
	"context"
	"sync/atomic"
	"testing"
	"time"
)

// TestRunPassesUntilCancelled: passes keep coming, each with Run's context,
// until it ends; then Run returns, and no pass is under way.
func TestRunPassesUntilCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	var passes, inPass atomic.Int32
	done := make(chan struct{})
	go func() {
		defer close(done)
		Run(ctx, time.Millisecond, func(pctx context.Context) {
			inPass.Add(1)
			defer inPass.Add(-1)
			if pctx != ctx {
				t.Error("the pass did not get Run's context")
			}
			if passes.Add(1) == 3 {
				cancel()
			}
		})
	}()
	<-done
	if n := passes.Load(); n < 3 {
		t.Fatalf("Run returned after %d passes", n)
	}
	if inPass.Load() != 0 {
		t.Fatal("Run returned during a pass")
	}
}

// TestRunWaitsAnIntervalFirst: no pass before the first interval.
func TestRunWaitsAnIntervalFirst(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	ran := false
	Run(ctx, time.Hour, func(context.Context) { ran = true })
	if ran {
		t.Fatal("a pass ran before the first interval")
	}
}
