//go:build linux

package guestinit

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sort"
	"strings"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4/nclient4"
	"github.com/vishvananda/netlink"

	"github.com/stackvm/stack/guestproto"
)

const dhcpTimeout = 15 * time.Second

// configureNetwork brings lo up and configures each NIC by MAC: a static
// address with a default route via its gateway, or DHCP. It returns MAC →
// IPv4 address and the DNS servers DHCP offered. byPosition finds the i-th
// NIC of the config as the i-th Ethernet device and gives it the config's
// MAC: a VM restored from a template has the template VM's MACs.
func configureNetwork(ctx context.Context, nics []guestproto.NIC, byPosition bool, log *slog.Logger) (map[string]string, []netip.Addr, error) {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return nil, nil, fmt.Errorf("find lo: %w", err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return nil, nil, fmt.Errorf("bring lo up: %w", err)
	}
	addrs := map[string]string{}
	var dns []netip.Addr
	for i, nic := range nics {
		hw := nic.MAC.HardwareAddr()
		var link netlink.Link
		var err error
		if _, err := waitFor(deviceWait, func() (string, error) {
			if byPosition {
				link, err = linkAt(i)
			} else {
				link, err = linkByMAC(hw)
			}
			return "", err
		}); err != nil {
			return nil, nil, err
		}
		name := link.Attrs().Name
		if byPosition && !bytes.Equal(link.Attrs().HardwareAddr, hw) {
			if err := netlink.LinkSetHardwareAddr(link, hw); err != nil {
				return nil, nil, fmt.Errorf("set mac %s on %s: %w", hw, name, err)
			}
		}
		log.Debug("nic found", "nic", name)
		if err := netlink.LinkSetUp(link); err != nil {
			return nil, nil, fmt.Errorf("bring %s up: %w", name, err)
		}
		if nic.DHCP {
			ip, servers, err := dhcp(ctx, link, i)
			if err != nil {
				return nil, nil, err
			}
			addrs[hw.String()] = ip
			dns = append(dns, servers...)
			log.Info("dhcp lease", "nic", name, "mac", hw, "ip", ip)
			continue
		}
		a, err := netlink.ParseAddr(nic.Address.String())
		if err != nil {
			return nil, nil, fmt.Errorf("parse address %s of %s: %w", nic.Address, name, err)
		}
		if err := netlink.AddrReplace(link, a); err != nil {
			return nil, nil, fmt.Errorf("add address %s to %s: %w", nic.Address, name, err)
		}
		if nic.Gateway.IsValid() {
			if err := addDefaultRoute(link, net.IP(nic.Gateway.AsSlice()), i); err != nil {
				return nil, nil, err
			}
		}
		addrs[hw.String()] = a.IP.String()
		log.Debug("nic configured", "nic", name)
	}
	return addrs, dns, nil
}

func linkByMAC(hw net.HardwareAddr) (netlink.Link, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	for _, l := range links {
		if strings.EqualFold(l.Attrs().HardwareAddr.String(), hw.String()) {
			return l, nil
		}
	}
	return nil, fmt.Errorf("find nic %s: no interface with that mac", hw)
}

// linkAt is the i-th Ethernet device, in the order the kernel found them
// (the order of the VMM's devices).
func linkAt(i int) (netlink.Link, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	var eth []netlink.Link
	for _, l := range links {
		if l.Type() == "device" && len(l.Attrs().HardwareAddr) == 6 && l.Attrs().Flags&net.FlagLoopback == 0 {
			eth = append(eth, l)
		}
	}
	sort.Slice(eth, func(a, b int) bool { return eth[a].Attrs().Index < eth[b].Attrs().Index })
	if i >= len(eth) {
		return nil, fmt.Errorf("find nic %d: the VM has %d", i, len(eth))
	}
	return eth[i], nil
}

// addDefaultRoute adds a default route; the nth NIC's route gets metric
// 100+n so that several gateways can coexist, the first preferred.
func addDefaultRoute(link netlink.Link, gw net.IP, n int) error {
	r := &netlink.Route{LinkIndex: link.Attrs().Index, Gw: gw, Priority: 100 + n}
	if err := netlink.RouteReplace(r); err != nil {
		return fmt.Errorf("add default route via %s on %s: %w", gw, link.Attrs().Name, err)
	}
	return nil
}

// dhcp gets a lease and applies it (address, default route). The lease is
// applied with an infinite lifetime and not renewed: the stack gateway's
// addresses are stable for the VM's life.
func dhcp(ctx context.Context, link netlink.Link, n int) (string, []netip.Addr, error) {
	name := link.Attrs().Name
	c, err := nclient4.New(name, nclient4.WithTimeout(2*time.Second), nclient4.WithRetry(5))
	if err != nil {
		return "", nil, fmt.Errorf("start dhcp on %s: %w", name, err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(ctx, dhcpTimeout)
	defer cancel()
	lease, err := c.Request(ctx)
	if err != nil {
		return "", nil, fmt.Errorf("dhcp on %s: %w", name, err)
	}
	ack := lease.ACK
	mask := ack.SubnetMask()
	if mask == nil {
		mask = ack.YourIPAddr.DefaultMask()
	}
	a := &netlink.Addr{IPNet: &net.IPNet{IP: ack.YourIPAddr, Mask: mask}}
	if err := netlink.AddrReplace(link, a); err != nil {
		return "", nil, fmt.Errorf("add dhcp address %s to %s: %w", a.IPNet, name, err)
	}
	if r := ack.Router(); len(r) > 0 {
		if err := addDefaultRoute(link, r[0], n); err != nil {
			return "", nil, err
		}
	}
	var dns []netip.Addr
	for _, ip := range ack.DNS() {
		if a, ok := netip.AddrFromSlice(ip.To4()); ok {
			dns = append(dns, a)
		}
	}
	return ack.YourIPAddr.String(), dns, nil
}
