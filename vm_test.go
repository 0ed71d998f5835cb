package stack

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stackvm/stack/internal/filenames"
	"github.com/stackvm/stack/internal/netaddr"
	"github.com/stackvm/stack/state"
)

// A handle from the recorded state alone (no supervisor runs): identity,
// typed addresses, ports, Wait on a failed VM, and its console log.
func TestVMHandleFromState(t *testing.T) {
	ns := fmt.Sprintf("handle-%d", os.Getpid())
	p, err := ForNamespace(ns, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	st := state.New(ns)
	st.VMs["vm.web[0]"] = &state.VM{Address: "vm.web[0]", Name: "web-0", Status: state.StatusReady,
		NICs:       []state.NIC{{Network: "lan", IP: netip.MustParseAddr("10.1.0.2"), MAC: netaddr.MustParseMAC("52:54:00:00:00:02")}},
		Attributes: state.Attributes{"publish": json.RawMessage(`[{"host_port":8080,"guest_port":80,"protocol":"tcp"}]`)}}
	if err := p.Store().Write(st); err != nil {
		t.Fatal(err)
	}
	vm, err := p.VM("web-0")
	if err != nil {
		t.Fatal(err)
	}
	if vm.Address != "vm.web[0]" || vm.Addresses["lan"] != netip.MustParseAddr("10.1.0.2") ||
		len(vm.Ports) != 1 || vm.Ports[0] != (Port{HostPort: 8080, GuestPort: 80, Protocol: "tcp"}) {
		t.Fatalf("handle: %+v", vm)
	}
	if _, err := p.VM("web"); err == nil || !strings.Contains(err.Error(), "web-0") {
		t.Fatalf("unknown VM: %v, want an error listing web-0", err)
	}

	// The supervisor's record says the workload exited 3.
	dir := filenames.VMState(p.StateDir, ns, "web-0")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	rec := `{"spec": {}, "status": {"state": "failed", "exit_code": 3, "reason": "the workload exited with status 3"}}`
	if err := os.WriteFile(filepath.Join(dir, filenames.VMRecord), []byte(rec), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var nre *NotReadyError
	if err := vm.Wait(ctx); !errors.As(err, &nre) || nre.State != "failed" || nre.ExitCode == nil || *nre.ExitCode != 3 ||
		!strings.Contains(err.Error(), "exit code 3") {
		t.Fatalf("Wait on a failed VM: %v", err)
	}

	logPath := p.ConsoleLog("web-0")
	if err := os.WriteFile(logPath, []byte("one\r\ntwo\r\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r, err := vm.Logs(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := io.ReadAll(r); string(b) != "one\ntwo\n" {
		t.Fatalf("Logs: %q", b)
	}
	f, err := vm.Logs(ctx, true)
	if err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(f)
	var got []string
	for len(got) < 3 && sc.Scan() {
		got = append(got, sc.Text())
		if len(got) == 2 {
			lf, _ := os.OpenFile(logPath, os.O_APPEND|os.O_WRONLY, 0)
			lf.WriteString("three\r\n")
			lf.Close()
		}
	}
	if strings.Join(got, ",") != "one,two,three" {
		t.Fatalf("followed logs: %q (%v)", got, sc.Err())
	}
	f.Close()
	if sc.Scan() {
		t.Fatalf("followed logs go on after Close: %q", sc.Text())
	}
}

// The supervisor runs in another working directory than the command that
// starts it, so a relative state directory must reach it as an absolute
// path (it used to write its VM records under the executable's directory).
func TestRelativeStateDirIsMadeAbsolute(t *testing.T) {
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	if got, want := StateRoot("st"), filepath.Join(wd, "st"); got != want {
		t.Fatalf("StateRoot(\"st\") = %q, want %q", got, want)
	}
	if p, err := ForNamespace("ns", "./st/../st2"); err != nil || p.StateDir != filepath.Join(wd, "st2") {
		t.Fatalf("ForNamespace state dir = %q (%v)", p.StateDir, err)
	}
	if _, err := ForNamespace("../ns", "st"); err == nil {
		t.Fatal("ForNamespace took ../ns")
	}
	if got := StateRoot(""); !filepath.IsAbs(got) {
		t.Fatalf("default state root %q is not absolute", got)
	}
}
