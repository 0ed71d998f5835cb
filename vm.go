package stack

import (
	"context"
	"fmt"
	"io"
	"net/netip"

	"github.com/stackvm/stack/engine"
	"github.com/stackvm/stack/planner"
	"github.com/stackvm/stack/state"
)

// VM is a handle to one VM of a namespace, as Project.VM returns it. Its
// fields say which VM it is and how to reach it, as the last `up` recorded
// them (the planner keeps a VM's addresses for as long as it exists); its
// methods act on the VM as it is now.
type VM struct {
	// Name is the instance name, also its hostname: web, web-0, web-blue.
	Name string
	// Address is its address in the stack files: vm.web, vm.web[0].
	Address string
	// Addresses maps each network the VM is on to its IPv4 address.
	Addresses map[string]netip.Addr
	// Ports are its published ports: HostIP:HostPort on the host
	// forwards to GuestPort.
	Ports []Port

	p *Project
}

// Port is a published port.
type Port = engine.Port

// VMStatus is one VM as `ps` shows it.
type VMStatus = engine.VMStatus

// NotReadyError is what Wait returns for a VM that stopped or failed
// instead of becoming ready.
type NotReadyError = engine.NotReadyError

// ExecOptions tune Exec.
type ExecOptions = engine.ExecOptions

// ExecTTY is the terminal of an exec.
type ExecTTY = engine.ExecTTY

// WindowSize is a terminal's size in characters.
type WindowSize = engine.WindowSize

// VM returns a handle to the VM named name (web, web-0, web-blue) from the
// recorded state; it fails when the namespace has no such VM.
func (p *Project) VM(name string) (*VM, error) {
	st, err := p.Store().Read()
	if err != nil {
		return nil, err
	}
	rec, err := engine.FindVM(st, name)
	if err != nil {
		return nil, err
	}
	return p.handle(rec), nil
}

// VMs returns handles to every VM of the namespace, in address order.
func (p *Project) VMs() ([]*VM, error) {
	st, err := p.Store().Read()
	if err != nil {
		return nil, err
	}
	var out []*VM
	for _, addr := range engine.SortedAddresses(st) {
		out = append(out, p.handle(st.VMs[addr]))
	}
	return out, nil
}

// VMNames lists the namespace's VM instance names in address order.
func (p *Project) VMNames() ([]string, error) {
	vms, err := p.VMs()
	if err != nil {
		return nil, err
	}
	names := make([]string, len(vms))
	for i, v := range vms {
		names[i] = v.Name
	}
	return names, nil
}

// Status reports every VM of the namespace: live from the supervisor when
// it runs, else from the records it left (a VM whose process is gone shows
// as failed).
func (p *Project) Status(ctx context.Context) ([]VMStatus, error) {
	return p.engine().Status(ctx)
}

// PoolStatus is a warm pool: its VM block, its size and how many of its
// VMs wait to be taken.
type PoolStatus = engine.PoolStatus

// Pools lists the namespace's warm pools.
func (p *Project) Pools(ctx context.Context) ([]PoolStatus, error) {
	return p.engine().Pools(ctx)
}

// Exec runs argv in the running VM named vm and returns its exit code
// (128+n for a command killed by signal n). Initramfs VMs run it through
// the guest init's agent channel, with the workload's environment;
// cloud-init VMs over SSH as root, with the key stack installed through the
// seed and the host key it pinned there. Output is copied to opts.Stdout
// and opts.Stderr as it comes.
func (p *Project) Exec(ctx context.Context, vm string, argv []string, opts ExecOptions) (int, error) {
	return p.engine().Exec(ctx, vm, argv, opts)
}

// ConsoleLog is the path of a VM's console log.
func (p *Project) ConsoleLog(vm string) string { return p.engine().ConsoleLog(vm) }

// ConsoleSocket is the socket `stack console` attaches to.
func (p *Project) ConsoleSocket(vm string) string { return p.engine().ConsoleSocket(vm) }

func (p *Project) handle(rec *state.VM) *VM {
	v := &VM{Name: rec.Name, Address: rec.Address, Addresses: map[string]netip.Addr{}, Ports: []Port{}, p: p}
	for _, n := range rec.NICs {
		v.Addresses[n.Network] = n.IP
	}
	for _, pb := range planner.RecordedPublish(rec.Attributes) {
		v.Ports = append(v.Ports, Port{HostPort: pb.HostPort, GuestPort: pb.GuestPort, Protocol: pb.Protocol, HostIP: pb.HostIP})
	}
	return v
}

// Status reports the VM as `ps` shows it.
func (v *VM) Status(ctx context.Context) (VMStatus, error) {
	list, err := v.p.Status(ctx)
	if err != nil {
		return VMStatus{}, err
	}
	for _, s := range list {
		if s.Address == v.Address {
			return s, nil
		}
	}
	return VMStatus{}, fmt.Errorf("status of %s: it is no longer in namespace %q", v.Name, v.p.Stack.Namespace)
}

// Wait blocks until the VM is ready. It returns a *NotReadyError as soon as
// the VM is stopped or failed (a restart the policy may still make is not
// waited for), and ctx's error when ctx ends first.
func (v *VM) Wait(ctx context.Context) error {
	return v.p.engine().Wait(ctx, map[string]bool{v.Address: true})
}

// Wait blocks until every VM of the namespace is ready; see VM.Wait. The
// error joins a *NotReadyError for each VM that stopped or failed.
func (p *Project) Wait(ctx context.Context) error {
	return p.engine().Wait(ctx, nil)
}

// Logs returns the VM's serial console, one line per line, carriage returns
// dropped. Without follow it is what the log holds now; with follow it
// continues with new output (across VM restarts and log rotation) until ctx
// ends or the reader is closed, like `stack logs -f`.
func (v *VM) Logs(ctx context.Context, follow bool) (io.ReadCloser, error) {
	return v.ReadLogs(ctx, LogOptions{Follow: follow, Tail: -1})
}

// LogOptions tune ReadLogs.
type LogOptions = engine.LogOptions

// ReadLogs is Logs with a tail: the last opts.Tail lines (negative: all),
// then, with opts.Follow, what comes after.
func (v *VM) ReadLogs(ctx context.Context, opts LogOptions) (io.ReadCloser, error) {
	return v.p.engine().Logs(ctx, v.Name, opts)
}

// Stop stops the VM and keeps it; see Project.Stop.
func (v *VM) Stop(ctx context.Context, opts StopOptions) error {
	return v.p.Stop(ctx, []string{v.Name}, opts)
}

// Start boots the stopped VM again; see Project.Start.
func (v *VM) Start(ctx context.Context, opts StartOptions) error {
	return v.p.Start(ctx, []string{v.Name}, opts)
}

// Exec runs argv in the VM; see Project.Exec.
func (v *VM) Exec(ctx context.Context, argv []string, opts ExecOptions) (int, error) {
	return v.p.Exec(ctx, v.Name, argv, opts)
}
