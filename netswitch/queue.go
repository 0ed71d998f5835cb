package netswitch

import (
	"sync"
	"sync/atomic"
)

// QueuePerSource makes an internal port take frames through one bounded
// queue per source port, of depth frames each, instead of having every
// sender call its recv in turn. One goroutine of the switch empties the
// queues round-robin, a frame from each non-empty queue per round, and
// calls recv. So a port that sends faster than recv can go fills its own
// queue only: its excess is dropped (counted in its PortStats.QueueDrops
// and in the internal port's TxDrops) while every other port's frames wait
// for at most one frame of each other sender. Senders never wait for recv.
//
// Frames are copied into the queue; its slots are allocated on first use,
// so a source that never fills its queue costs little. For internal ports
// only; the gateway uses it.
func QueuePerSource(depth int) PortOption {
	return func(o *portOptions) { o.queue = depth }
}

// queuedIO is an internal port's transport with per-source queues.
type queuedIO struct {
	recv     func([]byte)
	depth    int
	maxFrame int

	mu     sync.Mutex                  // serialises growing queues
	queues atomic.Pointer[[]*srcQueue] // by source port slot
	wake   chan struct{}               // capacity 1: something was queued
	stop   chan struct{}
	done   chan struct{}
}

// srcQueue is one source port's ring of frames. The source's forwarder
// writes at the tail and the consumer reads at the head; a slot is reused
// only after the consumer has passed it.
type srcQueue struct {
	mu    sync.Mutex
	slots [][]byte
	head  int
	n     int
}

func newQueuedIO(recv func([]byte), depth, maxFrame int) *queuedIO {
	q := &queuedIO{recv: recv, depth: depth, maxFrame: maxFrame,
		wake: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	empty := []*srcQueue{}
	q.queues.Store(&empty)
	return q
}

// queue returns the queue of the source in slot, made on first use.
func (q *queuedIO) queue(slot int) *srcQueue {
	if qs := *q.queues.Load(); slot < len(qs) && qs[slot] != nil {
		return qs[slot]
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	qs := *q.queues.Load()
	if slot < len(qs) && qs[slot] != nil {
		return qs[slot]
	}
	next := make([]*srcQueue, max(len(qs), slot+1))
	copy(next, qs)
	next[slot] = &srcQueue{slots: make([][]byte, q.depth)}
	q.queues.Store(&next)
	return next[slot]
}

// write queues what fits of frames in the source's queue and drops the
// rest. A port's queue is written by that port's forwarder only, in order.
func (q *queuedIO) write(frames [][]byte, b *sendBatch) int {
	sq := q.queue(b.src.slot)
	sq.mu.Lock()
	k := 0
	for _, f := range frames {
		if sq.n == q.depth {
			break
		}
		i := (sq.head + sq.n) % q.depth
		buf := sq.slots[i]
		if cap(buf) < len(f) {
			buf = make([]byte, q.maxFrame) // once per slot: frames are at most maxFrame
		}
		sq.slots[i] = buf[:copy(buf[:len(f)], f)]
		sq.n++
		k++
	}
	sq.mu.Unlock()
	if k < len(frames) {
		b.src.queueDrops.Add(uint64(len(frames) - k))
	}
	if k > 0 {
		select {
		case q.wake <- struct{}{}:
		default:
		}
	}
	return k
}

// run is the consumer: it hands queued frames to recv round-robin until the
// port is closed.
func (q *queuedIO) run(*forwarder) {
	defer close(q.done)
	for {
		select {
		case <-q.stop:
			return
		case <-q.wake:
		}
		for busy := true; busy; {
			busy = false
			for _, sq := range *q.queues.Load() {
				if sq == nil {
					continue
				}
				sq.mu.Lock()
				if sq.n == 0 {
					sq.mu.Unlock()
					continue
				}
				f := sq.slots[sq.head]
				sq.mu.Unlock()
				q.recv(f) // the slot stays ours until head moves on
				sq.mu.Lock()
				sq.head = (sq.head + 1) % q.depth
				sq.n--
				sq.mu.Unlock()
				busy = true
			}
			select {
			case <-q.stop:
				return
			default:
			}
		}
	}
}

// close stops the consumer and waits for it, so that recv is not called
// once RemovePort has returned. Frames still queued are dropped.
func (q *queuedIO) close() error {
	close(q.stop)
	<-q.done
	return nil
}
