package stackfile

import (
	"fmt"
	"strings"
)

// GenerateBenchStack returns a stack file with nVMs VMs spread over nNets
// networks (nNets <= 250, nVMs/nNets <= 2048), for the loader's and the
// planner's benchmarks. Each network is a /16 and gets two vm blocks: one
// with count (fixed IPs, a published port each) and one with for_each
// (fixed IPs and MACs, depending on the counted block), so the
// IP, MAC and port uniqueness checks all run at full size.
func GenerateBenchStack(nVMs, nNets int) []byte {
	if nNets < 1 {
		nNets = 1
	}
	var b strings.Builder
	b.WriteString("stack \"bench\" {}\n\nvariable \"memory\" {\n  type    = number\n  default = 128\n}\n")
	port := 10000
	for i := 0; i < nNets; i++ {
		per := nVMs / nNets
		if i < nVMs%nNets {
			per++
		}
		counted := per / 2
		each := per - counted
		fmt.Fprintf(&b, "\nnetwork \"net%d\" {\n  subnet = \"10.%d.0.0/16\"\n}\n", i, i)
		if counted > 0 {
			fmt.Fprintf(&b, `
vm "c%d" {
  count     = %d
  memory_mb = var.memory
  command   = ["httpd", "-f", "-p", "80"]
  env       = { INDEX = tostring(count.index) }
  network "net%d" {
    ip = cidrhost(network.net%d.subnet, 10 + count.index)
  }
  publish {
    host_port  = %d + count.index
    guest_port = 80
  }
  ready {
    tcp = 80
  }
}
`, i, counted, i, i, port)
			port += counted
		}
		if each > 0 {
			dep := ""
			if counted > 0 {
				dep = fmt.Sprintf("  depends_on = [vm.c%d]\n", i)
			}
			fmt.Fprintf(&b, `
vm "f%d" {
  for_each = { for n in range(%d) : format("k%%d", n) => n }
  cpus     = 1
  network "net%d" {
    ip  = cidrhost(network.net%d.subnet, 32768 + each.value)
    mac = format("52:54:00:%%02x:%%02x:%%02x", %d, floor(each.value / 256), each.value %% 256)
  }
%s}
`, i, each, i, i, i, dep)
		}
	}
	return []byte(b.String())
}
