package client

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/stackvm/stack/supervisor/api"
)

// ExecIO are an exec's streams.
type ExecIO struct {
	// Stdin is read (with ExecSpec.Stdin) and sent as it comes; its end or
	// read error ends the command's input. The reading goroutine may
	// outlive Exec until a Read returns.
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	// Resize delivers new window sizes (with ExecSpec.TTY); may be nil.
	Resize <-chan api.WindowSize
}

// Exec runs spec in the VM at address and copies its output to stdio's
// writers as it comes. It returns the command's exit code.
func (c *Client) Exec(ctx context.Context, address string, spec api.ExecSpec, stdio ExecIO) (int, error) {
	conn, err := c.dial(ctx)
	if err != nil {
		return -1, err
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })
	defer stop()
	if err := json.NewEncoder(conn).Encode(&api.Request{Op: api.OpExec, Address: address, Exec: &spec}); err != nil {
		return -1, fmt.Errorf("exec in %s: %w", address, err)
	}
	done := make(chan struct{})
	defer close(done)
	sendInputs(conn, spec, stdio, done)
	dec := json.NewDecoder(bufio.NewReader(conn))
	for {
		var ev api.ExecEvent
		if err := dec.Decode(&ev); err != nil {
			if ctx.Err() != nil {
				return -1, ctx.Err()
			}
			return -1, fmt.Errorf("exec in %s: the supervisor hung up: %w", address, err)
		}
		switch {
		case ev.Exit != nil && ev.Error != "" && *ev.Exit < 0:
			return -1, fmt.Errorf("exec in %s: %s", address, ev.Error)
		case ev.Exit != nil:
			if ev.Error != "" && stdio.Stderr != nil {
				fmt.Fprintln(stdio.Stderr, ev.Error)
			}
			return *ev.Exit, nil
		case ev.Stream == "stderr":
			if stdio.Stderr != nil {
				stdio.Stderr.Write(ev.Data)
			}
		default:
			if stdio.Stdout != nil {
				stdio.Stdout.Write(ev.Data)
			}
		}
	}
}

// sendInputs starts the goroutines that send an exec's stdin and window
// sizes on conn, one encoder call at a time, until done is closed (stdin's
// reader ends only with a Read that returns).
func sendInputs(conn net.Conn, spec api.ExecSpec, stdio ExecIO, done <-chan struct{}) {
	var mu sync.Mutex
	enc := json.NewEncoder(conn)
	send := func(in api.ExecInput) error {
		mu.Lock()
		defer mu.Unlock()
		select {
		case <-done:
			return net.ErrClosed
		default:
		}
		return enc.Encode(&in)
	}
	if spec.Stdin && stdio.Stdin != nil {
		go func() {
			buf := make([]byte, api.ExecInputChunk)
			for {
				n, err := stdio.Stdin.Read(buf)
				if n > 0 && send(api.ExecInput{Stdin: buf[:n]}) != nil {
					return
				}
				if err != nil {
					send(api.ExecInput{EOF: true})
					return
				}
			}
		}()
	}
	if spec.TTY != nil && stdio.Resize != nil {
		go func() {
			for {
				select {
				case <-done:
					return
				case ws, ok := <-stdio.Resize:
					if !ok || send(api.ExecInput{Size: &ws}) != nil {
						return
					}
				}
			}
		}()
	}
}
