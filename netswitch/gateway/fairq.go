package gateway

import "sync"

// fairQueue holds the requests of many clients for one service, at most
// perClient of one client and total of all, and hands them out round-robin
// across clients: one request of each client that has any, per round. So a
// client that floods a service fills its own share and delays every other
// client by at most one of its requests per turn, where a shared socket
// buffer would have let it crowd them out. Requests beyond a bound are
// dropped by push. One goroutine pops.
type fairQueue[K comparable, V any] struct {
	perClient, total int

	mu      sync.Mutex
	clients map[K][]V
	turns   []K // clients with requests, in turn order
	n       int
	wake    chan struct{} // capacity 1: something was pushed
}

func newFairQueue[K comparable, V any](perClient, total int) *fairQueue[K, V] {
	return &fairQueue[K, V]{perClient: perClient, total: total, clients: map[K][]V{}, wake: make(chan struct{}, 1)}
}

// push queues v for client k; false means it was dropped.
func (q *fairQueue[K, V]) push(k K, v V) bool {
	q.mu.Lock()
	reqs, waiting := q.clients[k]
	if len(reqs) >= q.perClient || q.n >= q.total {
		q.mu.Unlock()
		return false
	}
	if !waiting {
		q.turns = append(q.turns, k)
	}
	q.clients[k] = append(reqs, v)
	q.n++
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
	return true
}

// pop returns the next request in turn, waiting for one; false once done
// is closed.
func (q *fairQueue[K, V]) pop(done <-chan struct{}) (K, V, bool) {
	for {
		q.mu.Lock()
		if len(q.turns) > 0 {
			k := q.turns[0]
			q.turns = q.turns[1:]
			reqs := q.clients[k]
			v := reqs[0]
			var zero V
			reqs[0] = zero
			if reqs = reqs[1:]; len(reqs) > 0 {
				q.clients[k] = reqs
				q.turns = append(q.turns, k) // to the back of the line
			} else {
				delete(q.clients, k)
			}
			q.n--
			q.mu.Unlock()
			return k, v, true
		}
		q.mu.Unlock()
		select {
		case <-q.wake:
		case <-done:
			var k K
			var v V
			return k, v, false
		}
	}
}
