// Command stack is the CLI of stack. All the work is in package app, so that
// tests drive the same code in-process.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/stackvm/stack"
	"github.com/stackvm/stack/cmd/stack/app"
)

func main() {
	// The same binary serves as a namespace's supervisor: stack re-executes
	// itself to start one.
	if code, started := stack.Supervise(); started {
		os.Exit(code)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := app.Main(ctx, app.Streams{In: os.Stdin, Out: os.Stdout, Err: os.Stderr}, os.Args[1:])
	stop()
	os.Exit(code)
}
