package supervisor

import (
	"context"
	"encoding/json"
	"net"
	"sort"
	"time"

	"github.com/stackvm/stack/supervisor/api"
)

// phaseWatching acknowledges a watch: events after it are not missed.
const phaseWatching api.Phase = "watching"

func (s *Supervisor) watch(ctx context.Context, c net.Conn, enc *json.Encoder) {
	ch := make(chan api.Event, 256)
	s.mu.Lock()
	s.subs[ch] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.subs, ch)
		s.mu.Unlock()
	}()
	// Acknowledge the subscription so the client knows no event is missed
	// from here on.
	if enc.Encode(api.Event{Time: time.Now(), Phase: phaseWatching}) != nil {
		return
	}
	closed := make(chan struct{})
	go func() {
		buf := make([]byte, 1)
		c.Read(buf) // returns when the client hangs up
		close(closed)
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case <-closed:
			return
		case ev := <-ch:
			if enc.Encode(ev) != nil {
				return
			}
		}
	}
}

// emitVM emits an event of one VM incarnation, tagged with its instance
// token so that a waiter tells it from the events of the VM it replaced.
// Neither s.mu nor v.mu may be held.
func (s *Supervisor) emitVM(v *vmRun, phase api.Phase, msg string) {
	s.emitVMEvent(v, api.Event{Phase: phase, Message: msg})
}

// emitVMEvent sends ev about v's current incarnation, now.
func (s *Supervisor) emitVMEvent(v *vmRun, ev api.Event) {
	v.mu.Lock()
	ev.Instance = v.spec.Instance
	v.mu.Unlock()
	ev.Time, ev.Address = time.Now(), v.spec.Address
	s.send(ev)
}

// emit sends an event to every watcher; a watcher that cannot keep up
// misses events rather than stalling the supervisor.
func (s *Supervisor) emit(address string, phase api.Phase, msg string) {
	s.send(api.Event{Time: time.Now(), Address: address, Phase: phase, Message: msg})
}

func (s *Supervisor) send(ev api.Event) {
	s.log.Info(ev.Message, "address", ev.Address, "phase", ev.Phase)
	s.mu.Lock()
	defer s.mu.Unlock()
	for ch := range s.subs {
		select {
		case ch <- ev:
		default:
		}
	}
}

func (s *Supervisor) status() []api.VMStatus {
	vms := s.allVMs()
	out := make([]api.VMStatus, 0, len(vms))
	for _, v := range vms {
		out = append(out, v.snapshot())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Address < out[j].Address })
	return out
}
