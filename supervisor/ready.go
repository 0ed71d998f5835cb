package supervisor

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/stackvm/stack/cloudinit/outcome"
	"github.com/stackvm/stack/hypervisor"
	"github.com/stackvm/stack/hypervisor/console"
	"github.com/stackvm/stack/supervisor/api"
)

// awaitReady decides when the VM is ready: the probe when one is set, else
// the guest's own report (guest init or cloud-init's console line). A VM
// that is not ready in time is marked failed but left running, so that its
// console can be inspected; the next `up` replaces it.
func (s *Supervisor) awaitReady(ctx context.Context, v *vmRun, inst hypervisor.Instance) {
	v.mu.Lock()
	spec := v.spec.Ready
	v.mu.Unlock()
	timeout := time.Duration(spec.Timeout)
	if timeout <= 0 {
		timeout = 2 * time.Minute
	}
	loopCtx := ctx // the VMM's: the health check outlives the wait
	ctx, cancel := v.runningTimeout(ctx, timeout)
	defer cancel()
	var what string
	var warnings []string
	var err error
	switch {
	case spec.TCP != 0 || spec.HTTP != "":
		what, err = s.probe(ctx, v, spec)
	case len(spec.Exec) > 0:
		what, err = s.probeExec(ctx, v, inst, spec.Exec)
	case spec.ConsoleLine != "":
		what, warnings, err = s.waitCloudInit(ctx, v, spec)
	case spec.Guest:
		what, err = s.waitGuestReady(ctx, v, inst)
	default:
		what = "the VMM is running"
	}
	timedOut := errors.Is(context.Cause(ctx), context.DeadlineExceeded)
	if ctx.Err() != nil && !timedOut && err != nil {
		return // released or stopped
	}
	v.mu.Lock()
	stopping := v.stopping
	exited := v.st.State == api.StateStopped || v.st.State == api.StateFailed
	v.mu.Unlock()
	if stopping || exited {
		return
	}
	if err != nil {
		reason := err.Error()
		if timedOut {
			reason = fmt.Sprintf("not ready after %s (%s)", timeout, readyWhat(spec))
		}
		s.setState(v, api.StateFailed, reason, nil)
		s.emitVM(v, api.PhaseFailed, reason)
		return
	}
	v.mu.Lock()
	v.st.Warnings = warnings
	v.mu.Unlock()
	for _, w := range warnings {
		s.log.Warn(w, "address", v.spec.Address)
	}
	s.setState(v, api.StateReady, "", nil)
	s.emitVMEvent(v, api.Event{Phase: api.PhaseReady, Message: "ready: " + what, Warnings: warnings})
	if v.spec.Health != nil {
		go s.watchHealth(loopCtx, v, inst)
	}
}

func readyWhat(r api.Ready) string {
	switch {
	case len(r.Exec) > 0:
		return fmt.Sprintf("waiting for %q to exit 0", r.Exec)
	case r.TCP != 0:
		return fmt.Sprintf("waiting for TCP port %d", r.TCP)
	case r.HTTP != "":
		return "waiting for " + r.HTTP + " to answer 2xx"
	case r.ConsoleLine != "":
		return "waiting for cloud-init to finish"
	}
	return "waiting for the guest init's ready report"
}

func (s *Supervisor) waitGuestReady(ctx context.Context, v *vmRun, inst hypervisor.Instance) (string, error) {
	// guestEvents consumes the channel and leaves what it saw in v.
	for {
		news := v.guestNewsChan()
		v.mu.Lock()
		ready, gerr := v.guestReady, v.guestErr
		v.mu.Unlock()
		switch {
		case gerr != "":
			return "", errors.New("guest init: " + gerr)
		case ready:
			return "the guest init reported ready", nil
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-news:
		}
	}
}

// probeInterval is the readiness probes' cadence (the spec asks for 100 to
// 250 ms).
const probeInterval = 100 * time.Millisecond

// pollUntil calls check at the probe cadence until it reports done, errs,
// the VM stops, or ctx ends; news from the guest (such as a watched port
// now listening, see guestproto.Config.WatchPorts) runs the check at once.
func (s *Supervisor) pollUntil(ctx context.Context, v *vmRun, check func() (string, bool, error)) (string, error) {
	t := time.NewTicker(probeInterval)
	defer t.Stop()
	for {
		news := v.guestNewsChan()
		what, done, err := check()
		if err != nil {
			return "", err
		}
		if done {
			return what, nil
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-t.C:
		case <-news:
		}
	}
}

// waitCloudInit follows the console for cloud-init's end of this boot:
// the ready line, or its report of errors, judged (see
// api.Ready.ConsoleReportLine), or the failed line alone (a report that
// could not be read, or a seed from before reports).
func (s *Supervisor) waitCloudInit(ctx context.Context, v *vmRun, spec api.Ready) (string, []string, error) {
	logPath := consoleLogPath(&v.spec)
	v.mu.Lock()
	from := v.logStart
	v.mu.Unlock()
	var (
		done     bool
		what     string
		warnings []string
		fail     error
		unread   error // why the report line could not be read
	)
	err := console.Follow(ctx, logPath, from, func(line string) bool {
		switch {
		case strings.Contains(line, spec.ConsoleLine):
			done, what = true, "cloud-init finished"
		case spec.ConsoleReportLine != "" && strings.Contains(line, spec.ConsoleReportLine+" "):
			_, js, _ := strings.Cut(line, spec.ConsoleReportLine+" ")
			r, err := outcome.Parse([]byte(js))
			if err != nil {
				unread = err
				return true // the failed line follows
			}
			verdict := r.Judge(spec.CloudInitStrict)
			done = true
			if verdict.Fatal != "" {
				fail = errors.New(verdict.Fatal)
				return false
			}
			warnings, what = verdict.Warnings, "cloud-init finished"
			if len(verdict.Modules) > 0 {
				what += " with failed modules: " + strings.Join(verdict.Modules, ", ")
			}
		case spec.ConsoleFailLine != "" && strings.Contains(line, spec.ConsoleFailLine):
			done = true
			msg := "cloud-init finished with errors (see the console log)"
			if unread != nil {
				msg = fmt.Sprintf("cloud-init finished with errors, and its report could not be read (%v; see the console log)", unread)
			}
			fail = errors.New(msg)
		}
		return !done
	})
	switch {
	case fail != nil:
		return "", nil, fail
	case done:
		return what, warnings, nil
	}
	return "", nil, err
}

// probe runs the VM's tcp or http readiness probe, spec, through the
// gateway of its first network.
func (s *Supervisor) probe(ctx context.Context, v *vmRun, spec api.Ready) (string, error) {
	if len(v.spec.NICs) == 0 {
		return "", errors.New("a tcp or http readiness probe needs a network")
	}
	nic := v.spec.NICs[0]
	n := s.network(nic.Network)
	var gw Gateway
	if n != nil {
		gw = n.gateway()
	}
	if gw == nil {
		return "", fmt.Errorf("network %q has no gateway to probe through", nic.Network)
	}
	// A VM with a guest init starts its workload only after it reported
	// ready: probing before that finds nothing to connect to, and a dial
	// sent before the guest answers ARP stalls in the gateway's neighbour
	// resolution for about a second.
	if inst := v.instance(); inst != nil && inst.Guest() != nil {
		if _, err := s.waitGuestReady(ctx, v, inst); err != nil {
			return "", err
		}
	}
	if spec.TCP != 0 {
		addr := nic.IP.String() + ":" + strconv.Itoa(spec.TCP)
		return s.pollUntil(ctx, v, func() (string, bool, error) {
			// Shorter than a TCP retransmission: a lost SYN is sent
			// again by the next probe instead.
			pctx, cancel := context.WithTimeout(ctx, 2*probeInterval)
			defer cancel()
			c, err := gw.DialContext(pctx, "tcp", addr)
			if err != nil {
				return "", false, nil
			}
			c.Close()
			return "TCP port " + strconv.Itoa(spec.TCP) + " accepts connections", true, nil
		})
	}
	client := &http.Client{
		Timeout:   time.Second,
		Transport: &http.Transport{DialContext: s.guestDialer(gw, nic)},
	}
	return s.pollUntil(ctx, v, func() (string, bool, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, spec.HTTP, nil)
		if err != nil {
			return "", false, fmt.Errorf("ready probe %q: %w", spec.HTTP, err)
		}
		resp, err := client.Do(req)
		if err != nil {
			return "", false, nil
		}
		resp.Body.Close()
		if resp.StatusCode >= 200 && resp.StatusCode < 300 {
			return fmt.Sprintf("%s answered %d", spec.HTTP, resp.StatusCode), true, nil
		}
		return "", false, nil
	})
}

// guestDialer dials probe URLs from the network of nic, the probed VM's
// first: "localhost" is the guest itself, and a VM's name is its address
// on that network (as the guests' DNS answers it), which the host cannot
// resolve.
func (s *Supervisor) guestDialer(gw Gateway, nic api.NIC) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		host, port, err := net.SplitHostPort(addr)
		if err == nil {
			switch {
			case host == "localhost" || host == "127.0.0.1":
				addr = net.JoinHostPort(nic.IP.String(), port)
			case net.ParseIP(host) == nil:
				if ip := s.vmIP(host, nic.Network); ip != "" {
					addr = net.JoinHostPort(ip, port)
				}
			}
		}
		return gw.DialContext(ctx, network, addr)
	}
}

// vmIP is the address of the VM named name on network, or "".
func (s *Supervisor) vmIP(name, network string) string {
	for _, v := range s.allVMs() {
		v.mu.Lock()
		spec := v.spec
		v.mu.Unlock()
		if spec.Name != name {
			continue
		}
		for _, n := range spec.NICs {
			if n.Network == network {
				return n.IP.String()
			}
		}
	}
	return ""
}

// execProbeInterval is the cadence of exec readiness probes: each is a
// command started in the guest, dearer than a connection.
const execProbeInterval = 500 * time.Millisecond

// probeExec runs argv in the guest, as `stack exec` does (the guest agent,
// or SSH for cloud-init VMs), until it exits 0. A guest with an agent is
// first waited for: its agent serves execs once it reported ready.
func (s *Supervisor) probeExec(ctx context.Context, v *vmRun, inst hypervisor.Instance, argv []string) (string, error) {
	if inst.Guest() != nil {
		if _, err := s.waitGuestReady(ctx, v, inst); err != nil {
			return "", err
		}
	}
	for {
		if code, _ := s.execExit(ctx, v, inst, argv); code == 0 {
			return fmt.Sprintf("%q exited 0", argv), nil
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(execProbeInterval):
		}
	}
}
