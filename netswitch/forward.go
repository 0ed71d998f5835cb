package netswitch

import (
	"encoding/binary"
	"fmt"
	"sync"
)

// forwarder is the forwarding state of one source of frames (a port's
// reader goroutine, or the callers of an internal port under its lock). It
// owns the per-destination queues and send headers, so forwarding a batch
// allocates nothing once the port set is stable.
type forwarder struct {
	sw    *Switch
	src   *port
	ports *[]*port   // the port set pend was sized for
	pend  [][][]byte // frames queued per destination slot
	learn []MAC
	send  sendBatch
	one   [1][]byte // Inject's batch of one
}

func (sw *Switch) newForwarder(src *port) *forwarder {
	fw := &forwarder{sw: sw, src: src, learn: make([]MAC, 0, maxBatch)}
	fw.send.init()
	fw.send.src = src
	return fw
}

// forward switches a batch of at most maxBatch frames received on fw.src.
// The frames may be reused by the caller once forward returns.
func (fw *forwarder) forward(frames [][]byte) {
	sw := fw.sw
	src := fw.src
	ptr := sw.ports.Load()
	ports := *ptr
	if fw.ports != ptr {
		fw.resize(ptr)
	}
	now := sw.cfg.Now().UnixNano()
	var rxBytes, rxFrames, drops, spoofed uint64
	t := &sw.table
	fw.learn = fw.learn[:0]
	pinned, pinnedIPs := len(src.pins) > 0, src.ownIP

	t.mu.RLock()
	for _, f := range frames {
		if checkFrame(f, sw.maxFrame) != nil {
			drops++
			continue
		}
		if et := binary.BigEndian.Uint16(f[12:14]); (pinnedIPs || et == 0x0806 || et == 0x8100) && t.ipSpoofed(f, src) {
			spoofed++
			continue
		}
		s := srcMAC(f)
		if e := t.m[s]; e == nil || e.port != src {
			// A pinned port's own addresses are static entries behind
			// it, so only a spoofed frame gets here; and nobody may
			// send from an address pinned elsewhere.
			if pinned || (e != nil && e.static) {
				spoofed++
				continue
			}
			fw.learn = appendUnique(fw.learn, s)
		} else if now-e.seen.Load() > refreshEvery {
			e.seen.Store(now) // never for a static entry: its seen is ahead
		}
		rxFrames++
		rxBytes += uint64(len(f))
		d := dstMAC(f)
		if !d.IsMulticast() {
			if e := t.lookupLocked(d, now); e != nil {
				dp := e.port
				if dp == src {
					continue // the destination is behind the port it came from
				}
				if dp.slot < len(ports) && ports[dp.slot] == dp {
					fw.pend[dp.slot] = append(fw.pend[dp.slot], f)
					continue
				}
			}
		}
		for i, p := range ports {
			if p != nil && p != src {
				fw.pend[i] = append(fw.pend[i], f)
			}
		}
	}
	t.mu.RUnlock()

	for _, m := range fw.learn {
		t.learn(m, src, now)
	}
	src.rxFrames.Add(rxFrames)
	src.rxBytes.Add(rxBytes)
	if drops+spoofed > 0 {
		src.rxDrops.Add(drops + spoofed)
		if spoofed > 0 {
			src.spoofDrops.Add(spoofed)
		}
	}

	for i, q := range fw.pend {
		if len(q) == 0 {
			continue
		}
		p := ports[i]
		sent := p.io.write(q, &fw.send)
		var b uint64
		for _, f := range q[:sent] {
			b += uint64(len(f))
		}
		p.txFrames.Add(uint64(sent))
		p.txBytes.Add(b)
		if sent < len(q) {
			p.txDrops.Add(uint64(len(q) - sent))
		}
		clear(q) // do not keep receive buffers reachable from here
		fw.pend[i] = q[:0]
	}
}

func appendUnique(l []MAC, m MAC) []MAC {
	for _, x := range l {
		if x == m {
			return l
		}
	}
	return append(l, m)
}

func (fw *forwarder) resize(ptr *[]*port) {
	n := len(*ptr)
	if cap(fw.pend) >= n {
		fw.pend = fw.pend[:n]
	} else {
		np := make([][][]byte, n)
		copy(np, fw.pend)
		fw.pend = np
	}
	for i := range fw.pend {
		if fw.pend[i] == nil {
			fw.pend[i] = make([][]byte, 0, maxBatch)
		}
	}
	fw.ports = ptr
}

// InternalPort is an in-process port: frames for it are handed to a
// function, and frames from it enter the switch through Inject. The gateway
// is one.
type InternalPort struct {
	sw   *Switch
	p    *port
	mu   sync.Mutex // serialises Inject: one forwarder
	fw   *forwarder
	recv func(frame []byte)
}

type internalIO struct {
	recv func([]byte)
	mu   sync.Mutex // recv is called by one goroutine at a time
}

func (in *internalIO) write(frames [][]byte, _ *sendBatch) int {
	in.mu.Lock()
	defer in.mu.Unlock()
	for _, f := range frames {
		in.recv(f)
	}
	return len(frames)
}
func (in *internalIO) run(*forwarder) {}
func (in *internalIO) close() error   { return nil }

// AddInternal adds an in-process port. recv is called for every frame the
// switch delivers to the port, one call at a time; the frame is only valid
// during the call. Without QueuePerSource, recv runs on the sender's
// goroutine: it may call Inject (a frame never comes back to the port it
// entered by), but two such internal ports on one switch must not both
// answer synchronously, as each would wait for the other's recv. With
// QueuePerSource, recv runs on a goroutine of the port's own.
func (sw *Switch) AddInternal(name string, recv func(frame []byte), opts ...PortOption) (*InternalPort, error) {
	o := collectOptions(opts)
	if o.queue < 0 {
		return nil, fmt.Errorf("add internal port %q: queue depth %d", name, o.queue)
	}
	var io portIO = &internalIO{recv: recv}
	if o.queue > 0 {
		io = newQueuedIO(recv, o.queue, sw.maxFrame)
	}
	p, err := sw.addPort(name, KindInternal, "", io, o.queue > 0, o)
	if err != nil {
		return nil, err
	}
	return &InternalPort{sw: sw, p: p, fw: sw.newForwarder(p), recv: recv}, nil
}

// Inject sends one frame into the switch as if it arrived on the port. The
// frame may be reused when Inject returns. After the port is removed,
// Inject does nothing.
func (ip *InternalPort) Inject(frame []byte) {
	if ip.p.removed.Load() {
		return
	}
	ip.mu.Lock()
	ip.fw.one[0] = frame
	ip.fw.forward(ip.fw.one[:])
	ip.fw.one[0] = nil
	ip.mu.Unlock()
}

// Name is the port's name.
func (ip *InternalPort) Name() string { return ip.p.name }
