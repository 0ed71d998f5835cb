package app

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// hostAddr is one of the host's own non-loopback IPv4 addresses.
func hostAddr(t *testing.T) net.IP {
	t.Helper()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil && !n.IP.IsLoopback() && !n.IP.IsLinkLocalUnicast() {
			return n.IP.To4()
		}
	}
	t.Skip("the host has no non-loopback IPv4 address")
	return nil
}

// TestEgressAllowList: a guest's egress does not reach the host's own
// addresses, until the stack file's egress block allows the address; the
// change applies to the running network.
func TestEgressAllowList(t *testing.T) {
	requireVMs(t)
	ip := hostAddr(t)
	ln, err := net.Listen("tcp4", net.JoinHostPort(ip.String(), "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("host-says-hi\n"))
			c.Close()
		}
	}()
	port := ln.Addr().(*net.TCPAddr).Port
	file := filepath.Join(t.TempDir(), "stack.hcl")
	stack := func(egress string) string {
		return fmt.Sprintf(`network "lan" {
  subnet = "10.68.0.0/24"
  %s
}

vm "g" {
  network "lan" {}
}
`, egress)
	}
	c := newCLI(t, fmt.Sprintf("egr-%d", os.Getpid()))
	dial := fmt.Sprintf("nc -w 3 %s %d </dev/null", ip, port)

	writeFile(t, file, stack("egress = true"))
	c.mustRun("-f", file, "up", "--progress", "plain")
	if r := c.run("exec", "g", "--", "sh", "-c", dial); strings.Contains(r.stdout, "host-says-hi") {
		t.Fatalf("egress reached the host's own address %s without an allow entry: %+v", ip, r)
	}

	writeFile(t, file, stack(fmt.Sprintf(`egress {
    allow = ["%s"]
  }`, ip)))
	if plan := c.mustRun("-f", file, "plan").stdout; !strings.Contains(plan, "egress_allow") {
		t.Errorf("plan does not show the allow-list change:\n%s", plan)
	}
	c.mustRun("-f", file, "up", "--progress", "plain")
	deadline := time.Now().Add(30 * time.Second)
	for {
		r := c.run("exec", "g", "--", "sh", "-c", dial)
		if strings.Contains(r.stdout, "host-says-hi") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the allowed host address %s is not reachable: %+v", ip, r)
		}
		time.Sleep(500 * time.Millisecond)
	}
}
