package gateway

import (
	"net/netip"
	"sync"
)

// clientSlots counts something clients hold at once (DNS queries relayed
// upstream, DNS connections), at most perClient of one client and total of
// all.
type clientSlots struct {
	perClient, total int

	mu sync.Mutex
	n  int
	by map[netip.Addr]int
}

func newClientSlots(perClient, total int) *clientSlots {
	return &clientSlots{perClient: perClient, total: total, by: map[netip.Addr]int{}}
}

// acquire takes a slot for client; false when a bound is reached.
func (s *clientSlots) acquire(client netip.Addr) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.n >= s.total || s.by[client] >= s.perClient {
		return false
	}
	s.n++
	s.by[client]++
	return true
}

// release gives back a slot acquire took.
func (s *clientSlots) release(client netip.Addr) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.n--
	if s.by[client]--; s.by[client] <= 0 {
		delete(s.by, client)
	}
}
