package guestinit

import (
	"os"
	"slices"
	"time"

	"github.com/stackvm/stack/guestproto"
)

// portWatchInterval is how often the guest looks for the watched ports. A
// look reads two small /proc files; under TCG that is well under a
// millisecond of guest time.
const portWatchInterval = 10 * time.Millisecond

// portWatchLimit bounds the watch: a port that never listens is the host
// probe's timeout to report, not a reason to poll forever.
const portWatchLimit = 10 * time.Minute

// watchPorts reports each of Config.WatchPorts once it listens (see
// guestproto.Config.WatchPorts), until all do, the workload exits or the
// limit passes.
func (in *Init) watchPorts(ports []int) {
	deadline := time.Now().Add(portWatchLimit)
	t := time.NewTicker(portWatchInterval)
	defer t.Stop()
	var listening []int // sorted
	for {
		now := map[int]bool{}
		for _, table := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
			if f, err := os.Open(table); err == nil {
				ListeningPorts(f, now)
				f.Close()
			}
		}
		news := false
		for _, p := range ports {
			if now[p] && !slices.Contains(listening, p) {
				listening, news = append(listening, p), true
			}
		}
		if news {
			slices.Sort(listening)
			in.mu.Lock()
			in.status.Listening = slices.Clone(listening)
			st := in.status
			in.mu.Unlock()
			in.send(guestproto.Message{Type: guestproto.TypeListening, Status: &st})
			in.log.Info("listening", "ports", listening)
		}
		if len(listening) == len(ports) || time.Now().After(deadline) {
			return
		}
		select {
		case <-in.workDone:
			return
		case <-t.C:
		}
	}
}
