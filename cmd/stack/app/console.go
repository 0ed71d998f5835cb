package app

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"

	"github.com/spf13/cobra"
	"golang.org/x/term"
)

// detachKey ends `stack console` (Ctrl-], as telnet and virsh console use).
const detachKey = 0x1d

func newConsoleCmd(g *globals, s Streams) *cobra.Command {
	return &cobra.Command{
		Use:   "console VM",
		Short: "Attach the terminal to a VM's serial console (detach with Ctrl-])",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := project(g, s)
			if err != nil {
				return err
			}
			conn, err := net.Dial("unix", p.ConsoleSocket(args[0]))
			if err != nil {
				return fmt.Errorf("attach to the console of %q: is it running? (%v)", args[0], err)
			}
			defer conn.Close()
			if f, ok := s.In.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
				old, err := term.MakeRaw(int(f.Fd()))
				if err != nil {
					return fmt.Errorf("put the terminal in raw mode: %w", err)
				}
				defer term.Restore(int(f.Fd()), old)
			}
			fmt.Fprintf(s.Err, "Connected to the console of %s. Detach with Ctrl-].\r\n", args[0])
			done := make(chan error, 2)
			go func() {
				_, err := io.Copy(s.Out, conn)
				done <- err
			}()
			go func() { done <- copyUntilDetach(conn, s.In) }()
			err = <-done
			fmt.Fprint(s.Err, "\r\nDetached.\r\n")
			if errors.Is(err, errDetached) || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		},
	}
}

var errDetached = errors.New("detached")

// copyUntilDetach forwards input to the console until the detach key.
func copyUntilDetach(w io.Writer, r io.Reader) error {
	buf := make([]byte, 1024)
	for {
		n, err := r.Read(buf)
		for i := 0; i < n; i++ {
			if buf[i] == detachKey {
				if i > 0 {
					w.Write(buf[:i])
				}
				return errDetached
			}
		}
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return werr
			}
		}
		if err != nil {
			if err == io.EOF {
				return nil
			}
			return err
		}
	}
}
