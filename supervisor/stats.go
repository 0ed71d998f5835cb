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

// statsTimeout bounds one VM's QMP query in stats.
const statsTimeout = 2 * time.Second

// stats samples every running VM's counters (stats): what cannot be read
// (a VMM that just exited) is left zero.
func (s *Supervisor) stats(ctx context.Context) []api.VMStats {
	var out []api.VMStats
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
		out = append(out, st)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Address < out[j].Address })
	return out
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
