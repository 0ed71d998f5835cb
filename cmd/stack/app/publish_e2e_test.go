package app

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// publishStack is a web server whose port 80 is published on hostPort,
// with hostIP as its host_ip line ("" for none: the default).
func publishStack(hostPort int, hostIP string) string {
	line := ""
	if hostIP != "" {
		line = fmt.Sprintf("    host_ip    = %q\n", hostIP)
	}
	return fmt.Sprintf(`network "lan" {
  subnet = "10.77.0.0/24"
}

vm "web" {
  command = ["sh", "-c", "mkdir -p /www; echo hello from web > /www/index.html; exec httpd -f -p 80 -h /www"]
  network "lan" {}
  publish {
    host_port  = %d
    guest_port = 80
%s  }
  ready {
    tcp = 80
  }
}
`, hostPort, line)
}

// get fetches / from addr over plain HTTP/1.0.
func get(addr string) (string, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.WriteString(c, "GET / HTTP/1.0\r\n\r\n"); err != nil {
		return "", err
	}
	b, err := io.ReadAll(c)
	return string(b), err
}

// TestPublishHostIP: host_ip = "0.0.0.0" makes a published port reachable
// on the host's non-loopback address, and up says that it is open to other
// hosts; back to the default, the same port is updated in place (the VM
// keeps running) and listens on 127.0.0.1 only.
func TestPublishHostIP(t *testing.T) {
	requireVMs(t)
	ip := hostAddr(t)
	l, err := net.Listen("tcp4", ":0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	c := newCLI(t, fmt.Sprintf("pub-%d", os.Getpid()))
	file := filepath.Join(t.TempDir(), "stack.hcl")
	outside := net.JoinHostPort(ip.String(), strconv.Itoa(port))
	loopback := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))

	writeFile(t, file, publishStack(port, "0.0.0.0"))
	r := c.mustRun("-f", file, "up", "--progress", "plain")
	if want := fmt.Sprintf("Port %d/tcp of vm.web is open to other hosts: it listens on 0.0.0.0", port); !strings.Contains(r.stderr, want) {
		t.Fatalf("up does not say %q:\n%s", want, r.stderr)
	}
	if body, err := get(outside); err != nil || !strings.Contains(body, "hello from web") {
		t.Fatalf("GET http://%s/ with host_ip 0.0.0.0: %q, %v", outside, body, err)
	}
	web := c.ps()["web"]
	if len(web.Ports) != 1 || web.Ports[0].HostIP != "0.0.0.0" || web.Ports[0].HostPort != port {
		t.Fatalf("ps --json ports: %+v", web.Ports)
	}
	if r := c.mustRun("ps"); !strings.Contains(r.stdout, fmt.Sprintf("0.0.0.0:%d->80/tcp", port)) {
		t.Fatalf("ps does not show 0.0.0.0:%d->80/tcp:\n%s", port, r.stdout)
	}

	// The default: an update in place, to loopback only.
	writeFile(t, file, publishStack(port, ""))
	if r := c.mustRun("-f", file, "plan"); !strings.Contains(r.stdout, "~ vm.web") || !strings.Contains(r.stdout, "1 to update, 0 to replace") {
		t.Fatalf("plan of the host_ip change:\n%s", r.stdout)
	}
	r = c.mustRun("-f", file, "up", "--progress", "plain")
	if strings.Contains(r.stderr, "open to other hosts") {
		t.Fatalf("up says a loopback port is open to other hosts:\n%s", r.stderr)
	}
	if again := c.ps()["web"]; again.PID != web.PID || len(again.Ports) != 1 || again.Ports[0].HostIP != "127.0.0.1" {
		t.Fatalf("after the update: %+v (before: pid %d)", again, web.PID)
	}
	if body, err := get(loopback); err != nil || !strings.Contains(body, "hello from web") {
		t.Fatalf("GET http://%s/: %q, %v", loopback, body, err)
	}
	if _, err := get(outside); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("GET http://%s/ with the default host_ip: %v, want connection refused", outside, err)
	}
}
