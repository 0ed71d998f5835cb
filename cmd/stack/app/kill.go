package app

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/stackvm/stack"
)

func newKillCmd(g *globals, s Streams) *cobra.Command {
	var signal string
	cmd := newControlCmd(g, s, "kill [-s SIGNAL] [VM...]", "Send a signal (default KILL) to VMs' VMM processes", "Killed",
		func(ctx context.Context, p *stack.Project, names []string, opts stack.ControlOptions) error {
			sig, err := parseSignal(signal)
			if err != nil {
				return err
			}
			return p.Kill(ctx, names, sig, opts)
		})
	cmd.Flags().StringVarP(&signal, "signal", "s", "KILL", "the signal: a name (KILL, SIGTERM) or a number")
	return cmd
}

// parseSignal reads a signal as docker kill does: KILL, SIGKILL or 9.
func parseSignal(s string) (syscall.Signal, error) {
	if n, err := strconv.Atoi(s); err == nil && n > 0 && n < 65 {
		return syscall.Signal(n), nil
	}
	name := strings.ToUpper(s)
	if !strings.HasPrefix(name, "SIG") {
		name = "SIG" + name
	}
	if sig := unix.SignalNum(name); sig != 0 {
		return sig, nil
	}
	return 0, fmt.Errorf("kill: invalid signal %q", s)
}
