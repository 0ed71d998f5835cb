package app

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stackvm/stack/stackfile"
)

// The network keeps the supervisor from finding the namespace empty
// while the two VMs' disks are being prepared.
const machineIDStack = `network "lan" {
  subnet = "10.61.0.0/24"
}

vm "set" {
  machine_id = "%s"
  command    = ["sleep", "100000"]
  network "lan" {}
}

vm "derived" {
  command = ["sleep", "100000"]
  network "lan" {}
}
`

// TestMachineID: in initramfs mode the guest's /etc/machine-id is the
// machine_id attribute, else the one derived from the namespace and the
// VM's name; changing the attribute replaces the VM with the new ID.
func TestMachineID(t *testing.T) {
	requireVMs(t)
	file := filepath.Join(t.TempDir(), "stack.hcl")
	c := newCLI(t, fmt.Sprintf("mid-%d", os.Getpid()))
	for _, id := range []string{"0123456789abcdef0123456789abcdef", "fedcba9876543210fedcba9876543210"} {
		writeFile(t, file, fmt.Sprintf(machineIDStack, id))
		c.mustRun("-f", file, "up", "--progress", "plain")
		c.checkMachineID("set", id)
		c.checkMachineID("derived", stackfile.DeriveMachineID(c.ns, "derived"))
	}
}

// checkMachineID asserts what vm's /etc/machine-id holds.
func (c *cli) checkMachineID(vm, want string) {
	c.t.Helper()
	r := c.mustRun("exec", vm, "--", "cat", "/etc/machine-id")
	if got := strings.TrimSpace(r.stdout); got != want {
		c.t.Errorf("%s: /etc/machine-id is %q, want %q", vm, got, want)
	}
}
