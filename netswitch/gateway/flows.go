package gateway

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// flowTable bounds the egress flows (UDP 5-tuples and TCP connections,
// being dialled or established) the gateway holds for the guests: at most
// max in all and perVM per guest address. A new flow beyond a bound evicts
// the least recently used flow of the guest at its bound, or, at the total
// bound, of the guest holding the most flows: whoever fills the table pays
// for it. Eviction closes the flow's sockets (a TCP connection is reset for
// the guest; a UDP flow is re-made by its next datagram).
//
// Idle UDP flows are closed by sweep: after udpIdle without a datagram
// either way once a reply has come, after udpUnrepliedIdle when none has
// (a scan or a flood to hosts that do not answer should not hold sockets
// for a minute).
type flowTable struct {
	max, perVM             int
	udpIdle, unrepliedIdle time.Duration
	moveEvery              int64 // nanoseconds; see defaultMoveEvery

	mu      sync.Mutex
	n       int
	byVM    map[netip.Addr]*vmFlows
	evicted atomic.Uint64
	expired atomic.Uint64
}

// vmFlows are one guest's flows, most recently used first.
type vmFlows struct {
	n          int
	head, tail *flow
}

// flow is one egress flow. Its closers run once, when it is evicted,
// expires or ends.
type flow struct {
	vm  netip.Addr
	udp bool

	lastUse atomic.Int64 // unix nanoseconds
	moved   atomic.Int64 // when it last moved to the front of its list
	replied atomic.Bool

	prev, next *flow // under flowTable.mu
	listed     bool  // under flowTable.mu

	cmu     sync.Mutex
	closers []func()
	closed  bool
}

// defaultMoveEvery limits how often a busy flow takes the table's lock to
// move to the front: the order is least recently used to within this.
const defaultMoveEvery = int64(time.Second)

func newFlowTable(l Limits) *flowTable {
	return &flowTable{max: l.Flows, perVM: l.FlowsPerVM, udpIdle: l.UDPIdle, unrepliedIdle: l.UDPUnrepliedIdle,
		moveEvery: defaultMoveEvery, byVM: map[netip.Addr]*vmFlows{}}
}

// admit adds a flow of guest vm, evicting one if a bound requires.
func (t *flowTable) admit(vm netip.Addr, udp bool) *flow {
	now := time.Now().UnixNano()
	f := &flow{vm: vm, udp: udp}
	f.lastUse.Store(now)
	f.moved.Store(now)
	t.mu.Lock()
	var victim *flow
	switch v := t.byVM[vm]; {
	case v != nil && v.n >= t.perVM:
		victim = v.tail
	case t.n >= t.max:
		var most *vmFlows
		for _, o := range t.byVM {
			if most == nil || o.n > most.n {
				most = o
			}
		}
		victim = most.tail
	}
	if victim != nil {
		t.unlistLocked(victim)
	}
	t.pushFrontLocked(f)
	t.mu.Unlock()
	if victim != nil {
		t.evicted.Add(1)
		victim.close()
	}
	return f
}

func (t *flowTable) pushFrontLocked(f *flow) {
	v := t.byVM[f.vm]
	if v == nil {
		v = &vmFlows{}
		t.byVM[f.vm] = v
	}
	f.listed = true
	f.next = v.head
	if v.head != nil {
		v.head.prev = f
	}
	v.head = f
	if v.tail == nil {
		v.tail = f
	}
	v.n++
	t.n++
}

func (t *flowTable) unlistLocked(f *flow) {
	if !f.listed {
		return
	}
	v := t.byVM[f.vm]
	if f.prev != nil {
		f.prev.next = f.next
	} else {
		v.head = f.next
	}
	if f.next != nil {
		f.next.prev = f.prev
	} else {
		v.tail = f.prev
	}
	f.prev, f.next, f.listed = nil, nil, false
	v.n--
	t.n--
	if v.n == 0 {
		delete(t.byVM, f.vm)
	}
}

// touch records traffic on f.
func (t *flowTable) touch(f *flow) {
	now := time.Now().UnixNano()
	f.lastUse.Store(now)
	if now-f.moved.Load() < t.moveEvery {
		return
	}
	f.moved.Store(now)
	t.mu.Lock()
	if f.listed && t.byVM[f.vm].head != f {
		t.unlistLocked(f)
		t.pushFrontLocked(f)
	}
	t.mu.Unlock()
}

// release removes a flow that has ended and closes it.
func (t *flowTable) release(f *flow) {
	t.mu.Lock()
	t.unlistLocked(f)
	t.mu.Unlock()
	f.close()
}

// sweep closes the UDP flows idle at now beyond their timeout and returns
// how many.
func (t *flowTable) sweep(now time.Time) int {
	ns := now.UnixNano()
	var idle []*flow
	t.mu.Lock()
	for _, v := range t.byVM {
		for f := v.head; f != nil; f = f.next {
			if !f.udp {
				continue
			}
			limit := t.unrepliedIdle
			if f.replied.Load() {
				limit = t.udpIdle
			}
			if ns-f.lastUse.Load() > int64(limit) {
				idle = append(idle, f)
			}
		}
	}
	for _, f := range idle {
		t.unlistLocked(f)
	}
	t.mu.Unlock()
	for _, f := range idle {
		f.close()
	}
	t.expired.Add(uint64(len(idle)))
	return len(idle)
}

// counts returns the flows in all and of guest vm.
func (t *flowTable) counts(vm netip.Addr) (all, ofVM int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if v := t.byVM[vm]; v != nil {
		ofVM = v.n
	}
	return t.n, ofVM
}

// onClose registers fn to run when the flow closes; at once if it has.
func (f *flow) onClose(fn func()) {
	f.cmu.Lock()
	if f.closed {
		f.cmu.Unlock()
		fn()
		return
	}
	f.closers = append(f.closers, fn)
	f.cmu.Unlock()
}

// isClosed reports whether the flow has been closed.
func (f *flow) isClosed() bool {
	f.cmu.Lock()
	defer f.cmu.Unlock()
	return f.closed
}

func (f *flow) close() {
	f.cmu.Lock()
	if f.closed {
		f.cmu.Unlock()
		return
	}
	f.closed = true
	cs := f.closers
	f.closers = nil
	f.cmu.Unlock()
	for _, c := range cs {
		c()
	}
}
