package netswitch

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// macEntry says behind which port an address was last seen. The port never
// changes while the entry is in the map (a move replaces the entry's port
// under the write lock); seen is refreshed under the read lock.
//
// A static entry is an address pinned to its port (PinMACs): it never
// moves, and its seen lies so far in the future that it never expires and is
// never refreshed, which keeps the forwarding path free of a branch for it.
type macEntry struct {
	port   *port
	seen   atomic.Int64 // unix nanoseconds
	static bool
}

// staticSeen is the seen time of static entries (year 2116: now-seen stays
// negative, and far from overflowing, for any clock a test injects).
const staticSeen = int64(1) << 62

// macTable is the learning table. Lookups take the read lock once per
// batch; learning a new or moved address takes the write lock.
type macTable struct {
	mu      sync.RWMutex
	m       map[MAC]*macEntry
	ips     map[[4]byte]*port // pinned IPv4 addresses (PinIPs)
	maxAge  int64
	perPort int
	max     int
	refused atomic.Uint64
}

// refreshEvery limits how often a busy address's timestamp is rewritten, so
// that forwarding does not write a shared cache line per frame.
const refreshEvery = int64(time.Second)

func (t *macTable) init(maxAge time.Duration, perPort, max int) {
	t.m = make(map[MAC]*macEntry)
	t.ips = make(map[[4]byte]*port)
	t.maxAge = int64(maxAge)
	t.perPort = perPort
	t.max = max
}

// lookupLocked returns the live entry for m; the caller holds mu (either).
func (t *macTable) lookupLocked(m MAC, now int64) *macEntry {
	e := t.m[m]
	if e == nil || now-e.seen.Load() > t.maxAge {
		return nil
	}
	return e
}

// learn records that m was seen behind p. It reports false when a limit
// refused it.
func (t *macTable) learn(m MAC, p *port, now int64) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.m[m]
	if e != nil && e.port == p {
		if !e.static {
			e.seen.Store(now)
		}
		return true
	}
	if e != nil && e.static {
		// Forwarding drops such frames before they get here; this keeps
		// the table's own contract.
		t.refused.Add(1)
		return false
	}
	if p.learned >= t.perPort || (e == nil && len(t.m) >= t.max) {
		t.refused.Add(1)
		return false
	}
	if e != nil {
		// The address moved (a VM restarted behind another port, or an
		// entry expired and the address reappeared elsewhere).
		e.port.learned--
		ne := &macEntry{port: p}
		ne.seen.Store(now)
		t.m[m] = ne
	} else {
		ne := &macEntry{port: p}
		ne.seen.Store(now)
		t.m[m] = ne
	}
	p.learned++
	return true
}

// pin installs p's pinned addresses as static entries and its pinned IP
// addresses. It fails, changing nothing, when one of them is pinned to
// another port; an address learned behind another port moves to p.
func (t *macTable) pin(p *port) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, m := range p.pins {
		if e := t.m[m]; e != nil && e.static && e.port != p {
			return fmt.Errorf("pin %s: pinned to port %q", m, e.port.name)
		}
	}
	for _, a := range p.ips {
		if q := t.ips[a]; q != nil && q != p {
			return fmt.Errorf("pin %v: pinned to port %q", netip.AddrFrom4(a), q.name)
		}
	}
	for _, a := range p.ips {
		t.ips[a] = p
	}
	for _, m := range p.pins {
		if e := t.m[m]; e != nil && !e.static {
			e.port.learned--
		}
		ne := &macEntry{port: p, static: true}
		ne.seen.Store(staticSeen)
		t.m[m] = ne
	}
	return nil
}

// forget drops every address behind p (the port is being removed).
func (t *macTable) forget(p *port) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for m, e := range t.m {
		if e.port == p {
			delete(t.m, m)
		}
	}
	for a, q := range t.ips {
		if q == p {
			delete(t.ips, a)
		}
	}
	p.learned = 0
}

// expire drops entries older than maxAge and returns how many.
func (t *macTable) expire(now int64) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for m, e := range t.m {
		if now-e.seen.Load() > t.maxAge { // never true for static entries
			e.port.learned--
			delete(t.m, m)
			n++
		}
	}
	return n
}

// ipSpoofed reports whether an ARP or IPv4 frame from src claims an IP
// address src may not use (see PinIPs, ReserveIPs). The caller holds mu
// (either). It is called for every frame of a port with pinned IPs and for
// ARP and tagged frames of the others.
func (t *macTable) ipSpoofed(f []byte, src *port) bool {
	own := src.ownIP
	et, off := binary.BigEndian.Uint16(f[12:14]), EthHeaderLen
	if et == 0x8100 {
		if len(f) < EthHeaderLen+vlanTagLen {
			return own
		}
		et, off = binary.BigEndian.Uint16(f[16:18]), EthHeaderLen+vlanTagLen
	}
	switch et {
	case 0x0806: // ARP: hardware and protocol sender at 8 and 14
		if len(f) < off+28 {
			return own
		}
		spa := [4]byte(f[off+14 : off+18])
		if spa == ([4]byte{}) {
			return false
		}
		if q := t.ips[spa]; q != nil && q != src {
			return true
		}
		if own && !slices.Contains(src.ips, spa) {
			return true
		}
		return own && len(src.pins) > 0 && !slices.Contains(src.pins, MAC(f[off+8:off+14]))
	case 0x0800: // IPv4: source at 12
		if !own {
			return false
		}
		if len(f) < off+20 {
			return true
		}
		sip := [4]byte(f[off+12 : off+16])
		return sip != ([4]byte{}) && !slices.Contains(src.ips, sip)
	}
	return false
}
