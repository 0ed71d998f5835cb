package stack

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"sort"
	"strings"
	"time"

	"github.com/stackvm/stack/hypervisor/console"
	"github.com/stackvm/stack/planner"
	"github.com/stackvm/stack/state"
	"github.com/stackvm/stack/supervisor"
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
	// Ports are its published ports: 127.0.0.1:HostPort on the host
	// forwards to GuestPort.
	Ports []Port

	p *Project
}

// Port is a published port.
type Port = supervisor.PublishSpec

// VM returns a handle to the VM named name (web, web-0, web-blue) from the
// recorded state; it fails when the namespace has no such VM.
func (p *Project) VM(name string) (*VM, error) {
	st, err := p.Store().Read()
	if err != nil {
		return nil, err
	}
	rec := findVM(st, name)
	if rec == nil {
		return nil, noSuchVM(st, p.Stack.Namespace, name)
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
	for _, addr := range sortedAddresses(st) {
		out = append(out, p.handle(st.VMs[addr]))
	}
	return out, nil
}

func (p *Project) handle(rec *state.VM) *VM {
	v := &VM{Name: rec.Name, Address: rec.Address, Addresses: map[string]netip.Addr{}, Ports: []Port{}, p: p}
	for _, n := range rec.NICs {
		v.Addresses[n.Network] = n.IP
	}
	for _, pb := range planner.RecordedPublish(rec.Attributes) {
		v.Ports = append(v.Ports, Port{HostPort: pb.HostPort, GuestPort: pb.GuestPort, Protocol: pb.Protocol})
	}
	return v
}

func findVM(st *state.State, name string) *state.VM {
	for _, v := range st.VMs {
		if v.Name == name {
			return v
		}
	}
	return nil
}

func sortedAddresses(st *state.State) []string {
	addrs := st.VMAddresses()
	sort.Slice(addrs, func(i, j int) bool { return planner.CompareAddress(addrs[i], addrs[j]) < 0 })
	return addrs
}

func noSuchVM(st *state.State, namespace, name string) error {
	var names []string
	for _, addr := range sortedAddresses(st) {
		names = append(names, st.VMs[addr].Name)
	}
	if len(names) == 0 {
		return fmt.Errorf("no VM named %q: namespace %q has no VMs", name, namespace)
	}
	return fmt.Errorf("no VM named %q in namespace %q (it has: %s)", name, namespace, strings.Join(names, ", "))
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

// NotReadyError is what Wait returns for a VM that stopped or failed
// instead of becoming ready.
type NotReadyError struct {
	VM       string // instance name
	State    string // stopped or failed
	ExitCode *int   // when it exited
	Reason   string
}

func (e *NotReadyError) Error() string {
	msg := fmt.Sprintf("vm %s is %s", e.VM, e.State)
	if e.ExitCode != nil {
		msg += fmt.Sprintf(" (exit code %d)", *e.ExitCode)
	}
	if e.Reason != "" {
		msg += ": " + e.Reason
	}
	return msg
}

// waitInterval is how often Wait looks at the VMs' status.
const waitInterval = 100 * time.Millisecond

// Wait blocks until the VM is ready. It returns a *NotReadyError as soon as
// the VM is stopped or failed (a restart the policy may still make is not
// waited for), and ctx's error when ctx ends first.
func (v *VM) Wait(ctx context.Context) error {
	return v.p.wait(ctx, map[string]bool{v.Address: true})
}

// Wait blocks until every VM of the namespace is ready; see VM.Wait. The
// error joins a *NotReadyError for each VM that stopped or failed.
func (p *Project) Wait(ctx context.Context) error {
	return p.wait(ctx, nil)
}

// wait polls the status of the VMs in only (nil: all) until each is ready,
// or one is not going to be.
func (p *Project) wait(ctx context.Context, only map[string]bool) error {
	t := time.NewTicker(waitInterval)
	defer t.Stop()
	for {
		list, err := p.Status(ctx)
		if err != nil {
			return fmt.Errorf("wait: %w", err)
		}
		var errs []error
		pending := 0
		for _, s := range list {
			if only != nil && !only[s.Address] {
				continue
			}
			switch s.State {
			case state.StatusReady:
			case state.StatusStopped, state.StatusFailed:
				errs = append(errs, &NotReadyError{VM: s.Name, State: s.State, ExitCode: s.ExitCode, Reason: s.Reason})
			default:
				pending++
			}
		}
		if len(errs) > 0 {
			return errors.Join(errs...)
		}
		if pending == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait: %w", ctx.Err())
		case <-t.C:
		}
	}
}

// Logs returns the VM's serial console, one line per line, carriage returns
// dropped. Without follow it is what the log holds now; with follow it
// continues with new output (across VM restarts and log rotation) until ctx
// ends or the reader is closed, like `stack logs -f`.
func (v *VM) Logs(ctx context.Context, follow bool) (io.ReadCloser, error) {
	path := v.p.ConsoleLog(v.Name)
	if !follow {
		lines, err := console.Tail(path, 1<<30)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("logs of %s: %w", v.Name, err)
		}
		return io.NopCloser(strings.NewReader(joinLines(lines))), nil
	}
	// The rotated predecessor, then the current file from its start on: no
	// line is lost between reading what is there and following.
	old, err := console.Tail(console.RotatedPath(path), 1<<30)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("logs of %s: %w", v.Name, err)
	}
	ctx, cancel := context.WithCancel(ctx)
	pr, pw := io.Pipe()
	go func() {
		_, werr := io.WriteString(pw, joinLines(old))
		if werr == nil {
			console.Follow(ctx, path, 0, func(line string) bool {
				_, werr = io.WriteString(pw, line+"\n")
				return werr == nil
			})
		}
		pw.Close() // the reader sees EOF once ctx ends
	}()
	return &followReader{PipeReader: pr, cancel: cancel}, nil
}

func joinLines(lines []string) string {
	if len(lines) == 0 {
		return ""
	}
	return strings.Join(lines, "\n") + "\n"
}

// followReader stops following when closed.
type followReader struct {
	*io.PipeReader
	cancel context.CancelFunc
}

func (r *followReader) Close() error {
	r.cancel()
	return r.PipeReader.Close()
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
