package guestimage

import (
	"context"
	"encoding/json"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stackvm/stack/guestproto"
	"github.com/stackvm/stack/hypervisor"
	"github.com/stackvm/stack/hypervisor/qemu"
	"github.com/stackvm/stack/internal/filenames"
	"github.com/stackvm/stack/internal/netaddr"
	"github.com/stackvm/stack/internal/testutil"
)

// Boot 4: the default image through the QEMU driver (hypervisor/qemu), the
// way the engine boots it: the driver's agent channel sees the guest's
// ready report with the NIC's address, then word that the watched port
// listens once the workload's server binds it, and Stop (the agent's
// poweroff) ends in a guest power-off. Two shared directories go through
// virtio-fs (the default kernel has no 9p): the workload copies a file from
// the read-only one into the writable one, and cannot write the first; the
// virtiofsd daemons end with the VM.
func TestBootThroughQEMUDriver(t *testing.T) {
	img := testImage(t)
	runDir, err := os.MkdirTemp("", "stack-drv-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(runDir) })
	hostSock := filepath.Join(runDir, "nic.sock")
	nic, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: hostSock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nic.Close() })
	if qemu.FindVirtiofsd() == "" {
		t.Fatal("no virtiofsd (Debian: /usr/lib/qemu/virtiofsd from qemu-system-common)")
	}
	src, out := t.TempDir(), t.TempDir()
	if err := os.WriteFile(filepath.Join(src, "in.txt"), []byte("from the host\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	const mac = "52:54:00:00:00:01"
	gc, err := json.Marshal(guestproto.Config{
		Version:  guestproto.Version,
		Hostname: "drv",
		NICs:     []guestproto.NIC{{MAC: netaddr.MustParseMAC(mac), Address: netip.MustParsePrefix("10.42.0.7/24"), Gateway: netip.MustParseAddr("10.42.0.1")}},
		Mounts: []guestproto.Mount{
			{Source: "share:src", Target: "/src", ReadOnly: true},
			{Source: "share:out", Target: "/out"},
		},
		// The server binds a second after the ready report, so the guest's
		// port watch sees the port go from closed to listening.
		Command: []string{"sh", "-c", "cp /src/in.txt /out/copy.txt; " +
			"if touch /src/written 2>/dev/null; then echo writable; else echo read-only; fi > /out/src-mode; " +
			"sleep 1; exec httpd -f -p 8080"},
		WatchPorts: []int{8080},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*bootTimeout)
	defer cancel()
	d := qemu.New(qemu.Options{})
	inst, err := d.Start(ctx, &hypervisor.Config{
		Name: "drv", RunDir: runDir, CPUs: 1, MemoryMB: 256,
		Kernel: img.Kernel, Initramfs: img.Initramfs, Cmdline: "quiet",
		Machine: "auto", Accel: "auto",
		NICs:       []hypervisor.NIC{{MAC: netaddr.MustParseMAC(mac), DgramLocal: filepath.Join(runDir, "q.sock"), DgramRemote: hostSock}},
		GuestAgent: true, GuestConfig: gc,
		SharedDirs: []hypervisor.SharedDir{{Tag: "src", HostPath: src, ReadOnly: true}, {Tag: "out", HostPath: out}},
	})
	if err != nil {
		t.Fatalf("driver Start: %v", err)
	}
	t.Cleanup(func() {
		inst.Kill()
		inst.Close()
	})
	var ready *guestproto.Status
	hellos := 0
	timeout := time.After(bootTimeout)
	for ready == nil {
		select {
		case line, ok := <-inst.Guest().Events():
			if !ok {
				t.Fatal("agent channel closed before ready")
			}
			var m guestproto.Message
			if err := json.Unmarshal(line, &m); err != nil {
				t.Fatalf("guest sent %q: %v", line, err)
			}
			if m.Type == guestproto.TypeHello {
				hellos++
			}
			if m.Type == guestproto.TypeError {
				t.Fatalf("guest error: %s", m.Error)
			}
			if isReady(m) {
				ready = m.Status
			}
		case <-timeout:
			t.Fatal("no ready report through the driver")
		}
	}
	// The guest's own hello when it opened the port, and its answer to the
	// hello the driver sent on connecting, before the guest was up (QEMU
	// holds host input until the guest opens the port).
	if hellos < 2 {
		t.Errorf("%d hellos before ready, want 2", hellos)
	}
	if ready.Addresses[mac] != "10.42.0.7" {
		t.Errorf("addresses = %v", ready.Addresses)
	}
	if len(ready.Listening) != 0 {
		t.Errorf("ready report says %v listen before the server started", ready.Listening)
	}
	for listening := false; !listening; {
		select {
		case line, ok := <-inst.Guest().Events():
			if !ok {
				t.Fatal("agent channel closed before the port listened")
			}
			var m guestproto.Message
			if err := json.Unmarshal(line, &m); err != nil {
				t.Fatalf("guest sent %q: %v", line, err)
			}
			if m.Type == guestproto.TypeListening {
				if m.Status == nil || len(m.Status.Listening) != 1 || m.Status.Listening[0] != 8080 {
					t.Fatalf("listening report %s, want port 8080", line)
				}
				listening = true
			}
		case <-timeout:
			t.Fatal("no report that port 8080 listens")
		}
	}
	// The sockets of QEMU and the virtiofsd daemons are private, like
	// every other socket of stack.
	for _, name := range []string{filenames.QMPSocket, filenames.ConsoleVMMSocket, filenames.AgentSocket, "q.sock",
		filenames.VirtiofsSocket(0), filenames.VirtiofsSocket(1)} {
		st, err := os.Stat(filepath.Join(runDir, name))
		if err != nil {
			t.Errorf("socket %s: %v", name, err)
		} else if st.Mode().Perm() != filenames.FileMode {
			t.Errorf("socket %s has mode %v, want %v", name, st.Mode().Perm(), filenames.FileMode)
		}
	}
	// The workload did its file work before it started the server.
	for name, want := range map[string]string{"copy.txt": "from the host\n", "src-mode": "read-only\n"} {
		if got, err := os.ReadFile(filepath.Join(out, name)); err != nil || string(got) != want {
			t.Errorf("shared dir out: %s = %q, %v; want %q", name, got, err, want)
		}
	}
	if _, err := os.Stat(filepath.Join(src, "written")); err == nil {
		t.Error("the guest wrote into the read-only shared dir")
	}
	if err := inst.Stop(ctx, time.Minute); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	st, err := inst.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !st.GuestShutdown || st.Code != 0 {
		t.Errorf("exit status %+v, want a guest power-off with code 0", st)
	}
	// Each virtiofsd exits once QEMU has closed its connection.
	if left, err := testutil.WaitProcessesGone(10*time.Second, src, out); err != nil || len(left) > 0 {
		t.Fatalf("virtiofsd outlived its VM: %v %v", left, err)
	}
}
