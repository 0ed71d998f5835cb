// Command stack-init is the guest init of stack's initramfs-mode VMs: PID 1,
// built static (CGO_ENABLED=0) and placed at /init by package guestimage.
// All of its logic lives in package guestinit.
package main

import (
	"fmt"
	"os"

	"github.com/stackvm/stack/guestinit"
)

func main() {
	if os.Getpid() != 1 {
		fmt.Fprintln(os.Stderr, "stack-init: must run as PID 1 of a stack guest")
		os.Exit(2)
	}
	guestinit.Main()
}
