package qemu

// cleanups is a stack of undos, in the manner of defer: each start-up step
// pushes the undo of what it acquired right after acquiring it, a failed
// start unwinds the stack (last pushed, first run), and a successful one
// disarms it to keep everything.
type cleanups []func()

func (c *cleanups) push(undo func()) { *c = append(*c, undo) }

// unwind runs the undos in reverse order and empties the stack, so that a
// second unwind (the deferred one after an explicit one) does nothing.
func (c *cleanups) unwind() {
	for i := len(*c) - 1; i >= 0; i-- {
		(*c)[i]()
	}
	*c = nil
}

func (c *cleanups) disarm() { *c = nil }
