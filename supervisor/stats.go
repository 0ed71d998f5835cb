package supervisor

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/stackvm/stack/supervisor/api"
)

// statsTimeout bounds one VM's QMP query in stats; guestMemWait bounds
// the wait for the guests' memory reports, all VMs together.
const (
	statsTimeout = 2 * time.Second
	guestMemWait = time.Second
)

// stats samples every running VM's counters (stats): what cannot be read
// (a VMM that just exited, a guest without an agent or that does not
// answer in time) is left zero.
func (s *Supervisor) stats(ctx context.Context) []api.VMStats {
	var out []api.VMStats
	asked := s.askGuestMemory(ctx)
	memDeadline := time.Now().Add(guestMemWait)
	for _, v := range s.allVMs() {
		v.mu.Lock()
		inst, spec := v.inst, v.spec
		ended := v.st.Halted || v.st.State.Ended()
		ports := make([]string, len(spec.NICs))
		for i := range spec.NICs {
			ports[i] = v.port(i)
		}
		v.mu.Unlock()
		if inst == nil || ended {
			continue
		}
		st := api.VMStats{Address: spec.Address, Name: spec.Name, PID: inst.Identity().PID, Net: []api.NetStats{}}
		st.CPUNanos, st.RSSBytes, _ = procUsage(st.PID)
		for i, nic := range spec.NICs {
			ns := api.NetStats{Network: nic.Network}
			if n := s.network(nic.Network); n != nil {
				for _, p := range n.sw.Stats().Ports {
					if p.Name == ports[i] {
						// The port transmits what the VM receives.
						ns.RxBytes, ns.RxFrames, ns.TxBytes, ns.TxFrames = p.TxBytes, p.TxFrames, p.RxBytes, p.RxFrames
					}
				}
			}
			st.Net = append(st.Net, ns)
		}
		qctx, cancel := context.WithTimeout(ctx, statsTimeout)
		st.DiskRead, st.DiskWritten, _ = inst.DiskBytes(qctx)
		cancel()
		if seq, ok := asked[v]; ok {
			if mem, ok := waitGuestMemory(ctx, v, seq, memDeadline); ok {
				st.GuestMemTotal, st.GuestMemUsed = mem[0], mem[0]-min(mem[1], mem[0])
			}
		}
		out = append(out, st)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Address < out[j].Address })
	return out
}

// askGuestMemory asks every running VM whose guest has an agent for a
// report (TypeHello: it carries /proc/meminfo's figures) and returns the
// count of reports each had seen before.
func (s *Supervisor) askGuestMemory(ctx context.Context) map[*vmRun]int {
	asked := map[*vmRun]int{}
	for _, v := range s.allVMs() {
		v.mu.Lock()
		inst, seq := v.inst, v.guestMemSeq
		ended := v.st.Halted || v.st.State.Ended()
		v.mu.Unlock()
		if inst == nil || ended || inst.Guest() == nil {
			continue
		}
		sctx, cancel := context.WithTimeout(ctx, guestMemWait)
		err := inst.Guest().Send(sctx, []byte(`{"type":"hello"}`))
		cancel()
		if err == nil {
			asked[v] = seq
		}
	}
	return asked
}

// waitGuestMemory waits until v's guest reported after the report count
// seq, or deadline.
func waitGuestMemory(ctx context.Context, v *vmRun, seq int, deadline time.Time) ([2]uint64, bool) {
	for {
		news := v.guestNewsChan()
		v.mu.Lock()
		mem, now := v.guestMem, v.guestMemSeq
		v.mu.Unlock()
		if now > seq {
			return mem, true
		}
		select {
		case <-news:
		case <-ctx.Done():
			return mem, false
		case <-time.After(time.Until(deadline)):
			return mem, false
		}
	}
}

// clockTick is the unit of /proc/PID/stat's times (USER_HZ, 100 on Linux).
const clockTick = 10 * time.Millisecond

// procUsage reads a process's CPU time (user + system) and resident memory
// from /proc.
func procUsage(pid int) (cpuNanos, rssBytes uint64, err error) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, err
	}
	// The command name, in parentheses, may hold spaces: fields count
	// from after its closing parenthesis (field 3, the state, first).
	i := strings.LastIndexByte(string(stat), ')')
	f := strings.Fields(string(stat[i+1:]))
	if len(f) < 22 {
		return 0, 0, fmt.Errorf("read /proc/%d/stat: too few fields", pid)
	}
	utime, _ := strconv.ParseUint(f[11], 10, 64)    // field 14
	stime, _ := strconv.ParseUint(f[12], 10, 64)    // field 15
	rssPages, _ := strconv.ParseUint(f[21], 10, 64) // field 24
	return (utime + stime) * uint64(clockTick), rssPages * uint64(os.Getpagesize()), nil
}
