package supervisor

import (
	"context"
	"errors"
	"testing"
	"time"
)

// TestRunningTimeoutWaitsWhilePaused: the readiness timeout of a paused VM
// does not run; it runs out once the VM runs again.
func TestRunningTimeoutWaitsWhilePaused(t *testing.T) {
	v := &vmRun{}
	v.setPaused(true)
	ctx, cancel := v.runningTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	select {
	case <-ctx.Done():
		t.Fatal("the timeout ran out while the VM was paused")
	case <-time.After(200 * time.Millisecond): // twenty times the timeout
	}
	v.setPaused(false)
	<-ctx.Done() // the test's own timeout catches a timer that never fires
	if !errors.Is(context.Cause(ctx), context.DeadlineExceeded) {
		t.Fatalf("cause %v, want DeadlineExceeded", context.Cause(ctx))
	}
}

// TestRunningTimeoutCancel: cancelling is not a timeout.
func TestRunningTimeoutCancel(t *testing.T) {
	v := &vmRun{}
	ctx, cancel := v.runningTimeout(context.Background(), time.Hour)
	cancel()
	<-ctx.Done()
	if errors.Is(context.Cause(ctx), context.DeadlineExceeded) {
		t.Fatal("a cancel read as a timeout")
	}
}
