package fsutil

import (
	"context"
	"os"
	"path/filepath"
	"testing"
)

// TestLockSurvivesRemoval removes a held lock file, as down does, while
// another locker waits: the waiter must end up holding the lock of the file
// now at the path (so a third locker waits for it), not of the removed one.
func TestLockSurvivesRemoval(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ns", "state.lock")
	a, err := LockFile(context.Background(), path, nil)
	if err != nil {
		t.Fatal(err)
	}
	waiting := make(chan struct{})
	got := make(chan *Lock)
	go func() {
		b, err := LockFile(context.Background(), path, func() { close(waiting) })
		if err != nil {
			t.Error(err)
		}
		got <- b
	}()
	<-waiting
	if err := a.Remove(); err != nil {
		t.Fatal(err)
	}
	b := <-got
	defer b.Unlock()
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("the waiter holds no file at the path: %v", err)
	}
	c, err := TryLockFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if c != nil {
		c.Unlock()
		t.Fatal("a third locker got the lock while the waiter held it")
	}
}
