package supervisor

import (
	"context"
	"net"
	"net/netip"
	"sync"

	"github.com/stackvm/stack/netswitch"
	"github.com/stackvm/stack/netswitch/gateway"
	"github.com/stackvm/stack/supervisor/api"
)

// Gateways is the factory of the real network gateways (package
// netswitch/gateway: DHCP, DNS, published ports, egress) that a supervisor
// attaches to every switch.
func Gateways() GatewayFactory {
	return func(sw *netswitch.Switch, spec api.NetworkSpec, namespace string) (Gateway, error) {
		gw, err := gateway.New(gateway.Config{
			Namespace: namespace, Network: spec.Name, Subnet: spec.Subnet, GatewayIP: spec.Gateway,
			DHCP: spec.DHCP, DNS: spec.DNS, Egress: spec.Egress, EgressAllow: spec.EgressAllow,
		})
		if err != nil {
			return nil, err
		}
		if err := gw.Attach(sw); err != nil {
			gw.Close()
			return nil, err
		}
		return &gatewayAdapter{gw: gw, hosts: map[string]host{}, publish: map[api.Port]netip.Addr{}}, nil
	}
}

// gatewayAdapter turns the supervisor's per-VM calls into the gateway's
// whole-set updates.
type gatewayAdapter struct {
	gw      *gateway.Gateway
	mu      sync.Mutex
	hosts   map[string]host
	publish map[api.Port]netip.Addr // → guest IP
}

type host struct {
	ip  netip.Addr
	mac api.MAC
}

func (a *gatewayAdapter) update() error {
	u := gateway.Update{Hosts: map[string]netip.Addr{}, Leases: map[api.MAC]netip.Addr{}}
	for name, h := range a.hosts {
		u.Hosts[name] = h.ip
		u.Leases[h.mac] = h.ip
	}
	for p, ip := range a.publish {
		u.Publish = append(u.Publish, gateway.Forward{Protocol: p.Protocol, HostPort: p.HostPort,
			HostIP: p.HostIP, GuestIP: ip, GuestPort: p.GuestPort})
	}
	return a.gw.Update(u)
}

func (a *gatewayAdapter) AddHost(name string, ip netip.Addr, mac api.MAC) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.hosts[name] = host{ip, mac}
	return a.update()
}

func (a *gatewayAdapter) RemoveHost(name string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.hosts, name)
	a.update()
}

func (a *gatewayAdapter) Publish(p api.Port, guestIP netip.Addr) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.publish[p] = guestIP
	if err := a.update(); err != nil {
		delete(a.publish, p)
		a.update()
		return err
	}
	return nil
}

func (a *gatewayAdapter) Unpublish(p api.Port) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.publish, p)
	a.update()
}

func (a *gatewayAdapter) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	return a.gw.DialGuest(ctx, network, addr)
}

func (a *gatewayAdapter) Close() error { return a.gw.Close() }
