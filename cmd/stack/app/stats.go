package app

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/stackvm/stack"
)

// statsInterval is the sampling period: CPU % is over one, and a stream
// refreshes at it.
const statsInterval = time.Second

// statsLine is one VM's figures, as `stats --json` prints them.
type statsLine struct {
	Name       string  `json:"name"`
	Address    string  `json:"address"`
	CPUPercent float64 `json:"cpu_percent"` // of one host CPU, over the last interval
	RSSBytes   uint64  `json:"rss_bytes"`
	// The guest's own view (the guest init's report; absent without one).
	GuestMemUsed  uint64     `json:"guest_mem_used_bytes,omitempty"`
	GuestMemTotal uint64     `json:"guest_mem_total_bytes,omitempty"`
	Net           []statsNet `json:"net"`
	DiskRead      uint64     `json:"disk_read_bytes"`
	DiskWritten   uint64     `json:"disk_written_bytes"`
}

type statsNet struct {
	Network  string `json:"network"`
	RxBytes  uint64 `json:"rx_bytes"`
	RxFrames uint64 `json:"rx_frames"`
	TxBytes  uint64 `json:"tx_bytes"`
	TxFrames uint64 `json:"tx_frames"`
}

func newStatsCmd(g *globals, s Streams) *cobra.Command {
	var noStream, asJSON bool
	cmd := &cobra.Command{
		Use:     "stats [--no-stream] [--json]",
		Aliases: []string{"top"},
		Short:   "Show the VMs' CPU, memory, network and disk use (refreshing, as docker stats)",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			p, err := project(g, s)
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			prev, err := p.Stats(ctx)
			if err != nil {
				return err
			}
			tty := !asJSON && isTerminal(s.Out)
			for {
				select {
				case <-ctx.Done():
					return nil
				case <-time.After(statsInterval):
				}
				cur, err := p.Stats(ctx)
				if err != nil {
					if ctx.Err() != nil {
						return nil
					}
					return err
				}
				lines := statsLines(prev, cur, statsInterval)
				prev = cur
				if tty {
					io.WriteString(s.Out, "\x1b[H\x1b[2J") // redraw in place, as docker stats
				}
				if err := writeStats(s.Out, lines, asJSON); err != nil {
					return err
				}
				if noStream {
					return nil
				}
			}
		},
	}
	f := cmd.Flags()
	f.BoolVar(&noStream, "no-stream", false, "print one sample and exit")
	f.BoolVar(&asJSON, "json", false, "print one JSON object per VM and sample")
	return cmd
}

// statsLines turns two samples, interval apart, into figures: CPU % from
// the VMM's CPU time between them, the rest as of the second.
func statsLines(prev, cur []stack.VMStats, interval time.Duration) []statsLine {
	before := map[string]stack.VMStats{}
	for _, v := range prev {
		before[v.Address] = v
	}
	out := make([]statsLine, 0, len(cur))
	for _, v := range cur {
		l := statsLine{Name: v.Name, Address: v.Address, RSSBytes: v.RSSBytes, Net: []statsNet{},
			DiskRead: v.DiskRead, DiskWritten: v.DiskWritten, GuestMemUsed: v.GuestMemUsed, GuestMemTotal: v.GuestMemTotal}
		if b, ok := before[v.Address]; ok && b.PID == v.PID && v.CPUNanos >= b.CPUNanos {
			l.CPUPercent = float64(v.CPUNanos-b.CPUNanos) / float64(interval) * 100
		}
		for _, n := range v.Net {
			l.Net = append(l.Net, statsNet(n))
		}
		out = append(out, l)
	}
	return out
}

func writeStats(w io.Writer, lines []statsLine, asJSON bool) error {
	if asJSON {
		enc := json.NewEncoder(w)
		for _, l := range lines {
			if err := enc.Encode(l); err != nil {
				return err
			}
		}
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tCPU %\tMEM (RSS)\tGUEST MEM\tNET I/O (bytes)\tNET I/O (frames)\tDISK R/W")
	for _, l := range lines {
		var rx, tx, rf, tf uint64
		for _, n := range l.Net {
			rx, tx, rf, tf = rx+n.RxBytes, tx+n.TxBytes, rf+n.RxFrames, tf+n.TxFrames
		}
		guest := "-"
		if l.GuestMemTotal > 0 {
			guest = bytesText(l.GuestMemUsed) + " / " + bytesText(l.GuestMemTotal)
		}
		fmt.Fprintf(tw, "%s\t%.1f%%\t%s\t%s\t%s / %s\t%d / %d\t%s / %s\n", l.Name, l.CPUPercent, bytesText(l.RSSBytes), guest,
			bytesText(rx), bytesText(tx), rf, tf, bytesText(l.DiskRead), bytesText(l.DiskWritten))
	}
	return tw.Flush()
}

// bytesText writes n in binary units, as docker stats does.
func bytesText(n uint64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB"}
	f, i := float64(n), 0
	for f >= 1024 && i < len(units)-1 {
		f, i = f/1024, i+1
	}
	if i == 0 {
		return fmt.Sprintf("%dB", n)
	}
	return strings.TrimSuffix(fmt.Sprintf("%.2f", f), ".00") + units[i]
}
