package supervisor

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/stackvm/stack/internal/filenames"
	"github.com/stackvm/stack/internal/fsutil"
	"github.com/stackvm/stack/netswitch"
	"github.com/stackvm/stack/supervisor/api"
)

// network is the running network called name, or nil.
func (s *Supervisor) network(name string) *network {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.nets[name]
}

// networks are the running networks, in no order.
func (s *Supervisor) networks() []*network {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*network, 0, len(s.nets))
	for _, n := range s.nets {
		out = append(out, n)
	}
	return out
}

// ensureNetwork starts the switch and gateway of a network, or reconfigures
// the gateway of a running one. Changing a running network's addressing is
// the engine's business (it replaces the network): here it is an error.
func (s *Supervisor) ensureNetwork(spec api.NetworkSpec) error {
	n := s.network(spec.Name)
	if n != nil {
		cur := n.current()
		if cur.Subnet != spec.Subnet || cur.Gateway != spec.Gateway {
			return fmt.Errorf("network %q runs with subnet %s; remove it before changing its addressing", spec.Name, cur.Subnet)
		}
		if cur.Equal(spec) {
			return nil
		}
		return s.regateway(n, spec)
	}
	sw, err := netswitch.New(netswitch.Config{
		Name:   spec.Name,
		Dir:    filenames.NetworkRuntime(s.opts.RuntimeRoot, s.opts.Namespace, spec.Name),
		Logger: s.log,
	})
	if err != nil {
		return fmt.Errorf("start network %q: %w", spec.Name, err)
	}
	n = &network{spec: spec, sw: sw}
	if s.opts.Gateway != nil {
		if n.gw, err = s.opts.Gateway(sw, spec, s.opts.Namespace); err != nil {
			sw.Close()
			return fmt.Errorf("start gateway of network %q: %w", spec.Name, err)
		}
	}
	if err := writeJSON(filenames.NetworkRecord(s.opts.StateRoot, s.opts.Namespace, spec.Name), spec); err != nil {
		if n.gw != nil {
			n.gw.Close()
		}
		sw.Close()
		return fmt.Errorf("start network %q: %w", spec.Name, err)
	}
	s.mu.Lock()
	s.nets[spec.Name] = n
	s.mu.Unlock()
	s.emit("network."+spec.Name, api.PhaseNetwork, fmt.Sprintf("switch and gateway up on %s", spec.Subnet))
	return nil
}

// regateway replaces a network's gateway after a dhcp/dns/egress change and
// registers the VMs on it again. The switch, and so every VM's link, stays.
func (s *Supervisor) regateway(n *network, spec api.NetworkSpec) error {
	n.mu.Lock()
	old := n.gw
	n.gw = nil
	n.mu.Unlock()
	if old != nil {
		old.Close() // its ports and leases go before the new one takes them
	}
	var gw Gateway
	if s.opts.Gateway != nil {
		var err error
		if gw, err = s.opts.Gateway(n.sw, spec, s.opts.Namespace); err != nil {
			return fmt.Errorf("reconfigure gateway of network %q: %w", spec.Name, err)
		}
	}
	n.mu.Lock()
	n.spec, n.gw = spec, gw
	n.mu.Unlock()
	for _, v := range s.allVMs() {
		publish := v.publish()
		for i, nic := range v.spec.NICs {
			if nic.Network != spec.Name || gw == nil {
				continue
			}
			gw.AddHost(v.spec.Name, nic.IP, nic.MAC)
			if i == 0 {
				for _, p := range publish {
					gw.Publish(p, nic.IP)
				}
			}
		}
	}
	return writeJSON(filenames.NetworkRecord(s.opts.StateRoot, s.opts.Namespace, spec.Name), spec)
}

func (s *Supervisor) removeNetwork(name string) error {
	s.mu.Lock()
	n := s.nets[name]
	delete(s.nets, name)
	s.mu.Unlock()
	os.Remove(filenames.NetworkRecord(s.opts.StateRoot, s.opts.Namespace, name))
	if n == nil {
		return nil
	}
	if gw := n.gateway(); gw != nil {
		gw.Close()
	}
	err := n.sw.Close()
	os.RemoveAll(filenames.NetworkRuntime(s.opts.RuntimeRoot, s.opts.Namespace, name))
	s.emit("network."+name, api.PhaseStopped, "switch and gateway removed")
	return err
}

func writeJSON(path string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), filenames.DirMode); err != nil {
		return err
	}
	return fsutil.WriteFileAtomic(path, data)
}
