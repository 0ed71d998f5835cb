package app

import (
	"encoding/json"
	"fmt"
	"net"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/stackvm/stack/internal/termsafe"
)

// psEntry is one VM as `ps --json` prints it (the spec's shape).
type psEntry struct {
	Address   string            `json:"address"`
	Name      string            `json:"name"`
	State     string            `json:"state"`
	ExitCode  *int              `json:"exit_code"`
	Reason    string            `json:"reason,omitempty"`
	Addresses map[string]string `json:"addresses"`
	Ports     []psPort          `json:"ports"`
	Uptime    string            `json:"uptime,omitempty"`
	PID       int               `json:"pid,omitempty"`
	Accel     string            `json:"accel,omitempty"`  // kvm | tcg
	Boot      string            `json:"boot,omitempty"`   // cold | template
	Health    string            `json:"health,omitempty"` // starting | healthy | unhealthy
	Restarts  int               `json:"restarts"`
	// Warnings: what is wrong with a ready VM (each failed cloud-init
	// module, with its error).
	Warnings []string `json:"warnings,omitempty"`
	// Stale, when set, says why the state is the records' and not the
	// supervisor's (none runs, or it did not answer).
	Stale string `json:"stale,omitempty"`
}

type psPort struct {
	HostIP    string `json:"host_ip"`
	HostPort  int    `json:"host_port"`
	GuestPort int    `json:"guest_port"`
	Protocol  string `json:"protocol"`
}

func newPsCmd(g *globals, s Streams) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "ps",
		Short: "List the namespace's VMs: state, addresses, published ports, uptime",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			p, err := project(g, s)
			if err != nil {
				return err
			}
			vms, err := p.Status(cmd.Context())
			if err != nil {
				return err
			}
			list := make([]psEntry, 0, len(vms))
			for _, v := range vms {
				e := psEntry{Address: v.Address, Name: v.Name, State: v.State, Reason: v.Reason, Addresses: v.Addresses, Ports: []psPort{}, PID: v.PID, Accel: v.Accel, Boot: v.Boot, Health: v.Health, Restarts: v.Restarts, Warnings: v.Warnings, Stale: v.Stale}
				if v.State == "stopped" || v.State == "failed" {
					e.ExitCode = v.ExitCode
				}
				if e.Addresses == nil {
					e.Addresses = map[string]string{}
				}
				for _, pt := range v.Ports {
					e.Ports = append(e.Ports, psPort{pt.Host().String(), pt.HostPort, pt.GuestPort, pt.Protocol})
				}
				if !v.StartedAt.IsZero() && (v.State == "ready" || v.State == "booting") {
					e.Uptime = time.Since(v.StartedAt).Round(time.Second).String()
				}
				list = append(list, e)
			}
			if asJSON {
				enc := json.NewEncoder(s.Out)
				enc.SetIndent("", "  ")
				return enc.Encode(list)
			}
			stale := ""
			tw := tabwriter.NewWriter(s.Out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tSTATE\tADDRESSES\tPORTS\tUPTIME")
			for _, e := range list {
				state := e.State
				switch {
				case e.ExitCode != nil:
					state = fmt.Sprintf("%s (exit %d)", state, *e.ExitCode)
				case e.Health != "":
					state = fmt.Sprintf("%s (%s)", state, e.Health)
				}
				if e.Stale != "" {
					state += " (stale)"
					stale = e.Stale
				}
				var addrs []string
				for net, ip := range e.Addresses {
					addrs = append(addrs, net+"="+ip)
				}
				sort.Strings(addrs)
				var ports []string
				for _, pt := range e.Ports {
					ports = append(ports, fmt.Sprintf("%s->%d/%s", net.JoinHostPort(pt.HostIP, strconv.Itoa(pt.HostPort)), pt.GuestPort, pt.Protocol))
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", e.Name, state, strings.Join(addrs, ","), strings.Join(ports, ","), e.Uptime)
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			// A VM's warnings: a line each, under the table.
			for _, e := range list {
				for _, w := range e.Warnings {
					fmt.Fprintf(s.Out, "warning: %s: %s\n", e.Name, termsafe.String(w))
				}
			}
			if stale != "" {
				fmt.Fprintf(s.Out, "Stale: %s, so these states are its records'. Nothing forwards published ports or restarts VMs; `stack up` takes the namespace over again.\n", termsafe.String(stale))
			}
			// Warm pools are not VMs of the stack: a line each.
			pools, err := p.Pools(cmd.Context())
			if err != nil {
				return err
			}
			for _, pl := range pools {
				fmt.Fprintf(s.Out, "pool %s: %d of %d ready", pl.Name, pl.Ready, pl.Size)
				if pl.Error != "" && pl.Ready < pl.Size {
					fmt.Fprintf(s.Out, " (%s)", termsafe.String(pl.Error))
				}
				fmt.Fprintln(s.Out)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the VMs as JSON")
	return cmd
}
