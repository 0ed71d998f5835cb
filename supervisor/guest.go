package supervisor

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"time"

	"github.com/stackvm/stack/guestproto"
	"github.com/stackvm/stack/hypervisor"
	"github.com/stackvm/stack/supervisor/api"
)

// guestEvents follows the guest agent channel: readiness, the workload's
// exit and bring-up errors.
func (s *Supervisor) guestEvents(ctx context.Context, v *vmRun, inst hypervisor.Instance) {
	g := inst.Guest()
	if g == nil {
		return
	}
	var lim guestLimiter
	exited := false
	for {
		select {
		case <-ctx.Done():
			return
		case line, ok := <-g.Events():
			if !ok {
				return
			}
			var m guestproto.Message
			if json.Unmarshal(line, &m) != nil {
				continue
			}
			boundMessage(&m)
			if m.Type == guestproto.TypeExit && m.Status != nil {
				// Once per incarnation (this loop's): the workload exits
				// once, and each report is a log line and an event to
				// every watcher.
				if exited {
					continue
				}
				exited = true
			}
			if !execTraffic(m.Type) {
				if ok, dropped := lim.allow(time.Now()); !ok {
					if dropped > 0 {
						s.log.Warn("dropped reports of a guest that sends too many", "vm", v.spec.Address, "dropped", dropped, "max_per_second", guestMsgRate)
					}
					continue
				}
			}
			s.onGuestMessage(v, &m)
		}
	}
}

func (s *Supervisor) onGuestMessage(v *vmRun, m *guestproto.Message) {
	st := m.Status
	switch m.Type {
	case guestproto.TypeExecOutput, guestproto.TypeExecExit, guestproto.TypeExecInputAck:
		v.mu.Lock()
		q := v.execs[m.ID]
		v.mu.Unlock()
		if q != nil {
			q.push(*m) // the session drains it until exec-exit
		}
		return
	case guestproto.TypeExit:
		if st != nil {
			code := st.ExitCode
			v.mu.Lock()
			v.guestExit = &code
			v.mu.Unlock()
			s.emitVM(v, api.PhaseExited, fmt.Sprintf("the workload exited with status %d", code))
		}
	case guestproto.TypeError:
		v.mu.Lock()
		v.guestErr = m.Error
		v.guestNewsLocked()
		v.mu.Unlock()
	case guestproto.TypeReady:
		v.mu.Lock()
		v.guestReady = true
		v.guestNewsLocked()
		v.mu.Unlock()
	case guestproto.TypeListening:
		v.mu.Lock()
		v.guestNewsLocked() // a probe waiting for its next tick looks now
		v.mu.Unlock()
	case guestproto.TypeHello:
		v.mu.Lock()
		if st != nil && st.MemTotal > 0 {
			v.guestMem = [2]uint64{st.MemTotal, st.MemAvailable}
			v.guestMemSeq++
			v.guestNewsLocked()
		}
		if st != nil && st.Ready {
			v.guestReady = true
			v.guestNewsLocked()
		}
		if st != nil && st.Exited {
			code := st.ExitCode
			v.guestExit = &code
		}
		unpark := st != nil && st.Parked && !v.unparking && v.inst != nil
		if unpark {
			v.unparking = true
		}
		inst, restored := v.inst, hypervisor.BootKind(v.st.Boot).Restored()
		v.mu.Unlock()
		if unpark {
			go s.unpark(v, inst, restored)
		}
	}
	if st != nil && st.Error != "" {
		v.mu.Lock()
		v.st.Reason = st.Error
		v.mu.Unlock()
	}
}

// unparkTimeout bounds making a template and telling the guest to go on.
const unparkTimeout = time.Minute

// unpark lets a guest that waits at its park point go on: the driver makes
// the VM's boot template first when it is to, then the guest gets the
// host's clock and fresh entropy, and, when restored from a template, word
// that its disks and NICs are not the template's.
func (s *Supervisor) unpark(v *vmRun, inst hypervisor.Instance, restored bool) {
	ctx, cancel := context.WithTimeout(context.Background(), unparkTimeout)
	defer cancel()
	if err := inst.Parked(ctx); err != nil {
		s.log.Warn("parked vm", "vm", v.spec.Address, "err", err)
	}
	var entropy [32]byte
	rand.Read(entropy[:])
	u := guestproto.Unpark{Time: time.Now().UnixNano(), Entropy: entropy[:], Restored: restored}
	if restored && len(v.spec.GuestConfig) <= guestproto.MaxUnparkConfig {
		// The guest of a restored VM takes its config from here: its
		// config disk holds the same, but reading it costs the guest
		// a cache flush and a read.
		u.Config = v.spec.GuestConfig
	}
	body, _ := json.Marshal(u)
	msg, _ := json.Marshal(guestproto.Message{Type: guestproto.TypeUnpark, Body: body})
	if err := inst.Guest().Send(ctx, msg); err != nil {
		s.log.Warn("unpark vm", "vm", v.spec.Address, "err", err)
		v.mu.Lock()
		v.unparking = false // the next hello tries again
		v.mu.Unlock()
	}
}

// guestNewsLocked wakes the waiters on the guest's ready report.
func (v *vmRun) guestNewsLocked() {
	if v.guestNews != nil {
		close(v.guestNews)
	}
	v.guestNews = make(chan struct{})
}

// guestNewsChan returns the channel closed at the guest's next report.
func (v *vmRun) guestNewsChan() <-chan struct{} {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.guestNews == nil {
		v.guestNews = make(chan struct{})
	}
	return v.guestNews
}

// releaseVM starts a held VM's workload (see api.VMSpec.Hold).
func (s *Supervisor) releaseVM(ctx context.Context, address string) error {
	// s.mu stays held while the record is written, so that a stop-vm
	// cannot remove the VM and its record in between and have it written
	// back.
	s.mu.Lock()
	v := s.vms[address]
	var inst hypervisor.Instance
	if v != nil {
		v.mu.Lock()
		v.released, v.st.Held = true, false
		v.writeRecordLocked()
		inst = v.inst
		v.mu.Unlock()
	}
	s.mu.Unlock()
	if v == nil || inst == nil {
		return fmt.Errorf("release %s: not running", address)
	}
	return s.sendStart(v, inst)
}

func (s *Supervisor) sendStart(v *vmRun, inst hypervisor.Instance) error {
	g := inst.Guest()
	if g == nil {
		return nil
	}
	msg, _ := json.Marshal(guestproto.Message{Type: guestproto.TypeStart})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := g.Send(ctx, msg); err != nil {
		return fmt.Errorf("release %s: %w", v.spec.Address, err)
	}
	s.emitVM(v, api.PhaseBooting, "its dependencies are ready; starting the workload")
	return nil
}
