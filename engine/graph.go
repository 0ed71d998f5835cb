package engine

import (
	"context"
	"errors"
	"fmt"
	"sync"
)

// task is one node of a graph the executor runs: an action, or a join of
// other tasks (run nil, such as a plan's barrier).
type task struct {
	name string
	// deps are done before run starts. later are done before the task
	// continues past Slot.WaitLater: an initramfs VM with depends_on
	// boots at once and waits for its dependencies only before its
	// workload starts.
	deps, later []*task
	run         func(ctx context.Context, s *Slot) error

	done   chan struct{} // closed once the task has ended
	failed bool          // set before done closes
}

// Slot is a running task's handle on the executor.
type Slot struct {
	release   func()
	waitLater func() error
}

// Release gives the task's concurrency slot back before the task ends:
// a task that goes on waiting (for readiness) must not hold one.
func (s *Slot) Release() { s.release() }

// WaitLater waits for the task's later dependencies; it fails with a
// *BlockedError when one of them failed.
func (s *Slot) WaitLater() error { return s.waitLater() }

// BlockedError is a task not (or not wholly) carried out because one of
// the tasks it waited for failed.
type BlockedError struct {
	Task, By string
	// Later: the task had started (its later dependency failed).
	Later bool
}

func (e *BlockedError) Error() string {
	if e.Later {
		return fmt.Sprintf("%s: its dependency %s failed", e.Task, e.By)
	}
	return fmt.Sprintf("%s: not applied because %s failed", e.Task, e.By)
}

// runGraph runs every task once its deps are done, with at most limit of
// them between their start and their Release (or end). A task waits for its
// deps before it takes a slot, so that the limit cannot deadlock. A task
// whose dependency failed fails with a *BlockedError without running, and
// blocked (when set) is told; a failed task stops only what depends on it.
// Every error is returned (errors.Join). Once ctx ends, tasks not yet
// started fail with ctx's error.
func runGraph(ctx context.Context, tasks []*task, limit int, blocked func(t *task, err *BlockedError)) error {
	for _, t := range tasks {
		t.done = make(chan struct{})
	}
	sem := make(chan struct{}, limit)
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	// await waits for deps and names the first one that failed.
	await := func(deps []*task) *task {
		for _, d := range deps {
			select {
			case <-d.done:
			case <-ctx.Done():
				return nil
			}
		}
		for _, d := range deps {
			if d.failed {
				return d
			}
		}
		return nil
	}
	for _, t := range tasks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer close(t.done)
			fail := func(err error) {
				t.failed = true
				if t.run == nil {
					return // a join fails with its member, whose error counts
				}
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
			if by := await(t.deps); by != nil {
				err := &BlockedError{Task: t.name, By: by.name}
				if blocked != nil && t.run != nil {
					blocked(t, err)
				}
				fail(err)
				return
			}
			if t.run == nil {
				return
			}
			if ctx.Err() != nil {
				fail(fmt.Errorf("%s: %w", t.name, ctx.Err()))
				return
			}
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				fail(fmt.Errorf("%s: %w", t.name, ctx.Err()))
				return
			}
			var once sync.Once
			release := func() { once.Do(func() { <-sem }) }
			defer release()
			slot := &Slot{release: release, waitLater: func() error {
				if by := await(t.later); by != nil {
					return &BlockedError{Task: t.name, By: by.name, Later: true}
				}
				return ctx.Err()
			}}
			if err := t.run(ctx, slot); err != nil {
				fail(err)
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}
