package planner

import (
	"crypto/sha256"
	"fmt"
	"net/netip"

	"github.com/stackvm/stack/internal/netaddr"
	"github.com/stackvm/stack/stackfile"
	"github.com/stackvm/stack/state"
)

// assignNICs resolves every desired VM's attachments to an IP and a MAC.
//
// Stability is the rule: an address the file pins is used as is; otherwise a
// VM keeps what state recorded for it on that network, unless another VM now
// pins that address. Only then is a new one allocated: the lowest free host
// address, in VM address order. Addresses still recorded for VMs about to be
// deleted are not handed out in the same plan. Allocation is linear in the
// number of NICs: one cursor per network that only moves forward.
func assignNICs(desired *stackfile.Stack, st *state.State) (map[string][]state.NIC, error) {
	nets := map[string]*stackfile.Network{}
	for _, n := range desired.Networks {
		nets[n.Name] = n
	}
	type key struct {
		net string
		ip  netip.Addr
	}
	pinnedIP := map[key]string{}          // → address of the VM that pins it
	pinnedMAC := map[netaddr.MAC]string{} // → address of the VM that pins it
	for _, vm := range desired.VMs {
		for _, n := range vm.NICs {
			if n.IP.IsValid() {
				pinnedIP[key{n.Network, n.IP}] = vm.Address
			}
			if !n.MAC.IsZero() {
				pinnedMAC[n.MAC] = vm.Address
			}
		}
	}
	usedIP := map[key]bool{}
	usedMAC := map[netaddr.MAC]bool{}
	for k := range pinnedIP {
		usedIP[k] = true
	}
	for m := range pinnedMAC {
		usedMAC[m] = true
	}
	desiredAddr := map[string]bool{}
	for _, vm := range desired.VMs {
		desiredAddr[vm.Address] = true
	}
	// Orphans keep their addresses until they are gone.
	for addr, rec := range st.VMs {
		if desiredAddr[addr] {
			continue
		}
		for _, n := range rec.NICs {
			usedIP[key{n.Network, n.IP}] = true
			usedMAC[n.MAC] = true
		}
	}

	out := make(map[string][]state.NIC, len(desired.VMs))
	type pending struct {
		vm  *stackfile.VM
		idx int
	}
	var needIP, needMAC []pending

	// First pass: pinned values and what state recorded.
	for _, vm := range desired.VMs {
		recorded := map[string]state.NIC{}
		if rec := st.VMs[vm.Address]; rec != nil {
			for _, n := range rec.NICs {
				recorded[n.Network] = n
			}
		}
		nics := make([]state.NIC, len(vm.NICs))
		for i, n := range vm.NICs {
			nics[i].Network = n.Network
			net := nets[n.Network]
			old, hasOld := recorded[n.Network]
			switch {
			case n.IP.IsValid():
				nics[i].IP = n.IP
			case hasOld && net != nil && usable(net, old.IP) && !usedIP[key{n.Network, old.IP}]:
				nics[i].IP = old.IP
				usedIP[key{n.Network, old.IP}] = true
			default:
				needIP = append(needIP, pending{vm, i})
			}
			switch {
			case !n.MAC.IsZero():
				nics[i].MAC = n.MAC
			case hasOld && !old.MAC.IsZero() && !usedMAC[old.MAC]:
				nics[i].MAC = old.MAC
				usedMAC[old.MAC] = true
			default:
				needMAC = append(needMAC, pending{vm, i})
			}
		}
		out[vm.Address] = nics
	}

	// Second pass: allocate what is left.
	cursor := map[string]netip.Addr{}
	for _, p := range needIP {
		n := &out[p.vm.Address][p.idx]
		net := nets[n.Network]
		if net == nil {
			return nil, fmt.Errorf("plan %s: network %q is not defined", p.vm.Address, n.Network)
		}
		ip, ok := cursor[n.Network]
		if !ok {
			ip = net.Subnet.Masked().Addr()
		}
		for {
			ip = ip.Next()
			if !ip.IsValid() || !net.Subnet.Contains(ip) {
				return nil, fmt.Errorf("plan %s: network %q (%s) has no free address left", p.vm.Address, n.Network, net.Subnet)
			}
			if usable(net, ip) && !usedIP[key{n.Network, ip}] {
				break
			}
		}
		cursor[n.Network] = ip
		usedIP[key{n.Network, ip}] = true
		n.IP = ip
	}
	for _, p := range needMAC {
		n := &out[p.vm.Address][p.idx]
		for salt := 0; ; salt++ {
			mac := DeriveMAC(desired.Namespace, p.vm.Name, n.Network, salt)
			if !usedMAC[mac] {
				usedMAC[mac] = true
				n.MAC = mac
				break
			}
		}
	}
	return out, nil
}

// usable reports whether ip can be given to a VM on net: inside the subnet
// and neither its network, broadcast nor gateway address.
func usable(net *stackfile.Network, ip netip.Addr) bool {
	if !ip.IsValid() || !net.Subnet.Contains(ip) || ip == net.Gateway {
		return false
	}
	if ip == net.Subnet.Masked().Addr() {
		return false
	}
	return ip != lastAddr(net.Subnet)
}

func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().As4()
	host := 32 - p.Bits()
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	v |= uint32(1)<<host - 1
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// DeriveMAC gives a VM's NIC a stable, locally administered unicast MAC
// (52:54 prefix, as QEMU uses) from the namespace, VM and network names. salt
// moves past the rare collision.
func DeriveMAC(namespace, vm, network string, salt int) netaddr.MAC {
	h := sha256.Sum256(fmt.Appendf(nil, "%s/%s/%s/%d", namespace, vm, network, salt))
	return netaddr.MAC{0x52, 0x54, h[0], h[1], h[2], h[3]}
}
