package guestimage

import (
	"encoding/binary"
	"net"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// serveDHCP answers DHCP on one NIC socket of a test VM, as the stack
// gateway would: it offers and acknowledges lease to whoever asks, with
// router and DNS server. Frames from the guest arrive on conn; replies go
// to the socket QEMU bound (qemuSock). It runs until conn is closed and
// returns the number of ACKs sent on done.
func serveDHCP(t *testing.T, conn *net.UnixConn, qemuSock string, lease, server net.IP, done chan<- int) {
	serverMAC := net.HardwareAddr{0x52, 0x54, 0x00, 0xff, 0xff, 0x01}
	to := &net.UnixAddr{Name: qemuSock, Net: "unixgram"}
	acks := 0
	defer func() { done <- acks }()
	buf := make([]byte, 2048)
	for {
		conn.SetReadDeadline(time.Now().Add(3 * time.Minute))
		n, _, err := conn.ReadFromUnix(buf)
		if err != nil {
			return
		}
		req, ok := parseDHCPFrame(buf[:n])
		if !ok {
			continue
		}
		var typ dhcpv4.MessageType
		switch req.MessageType() {
		case dhcpv4.MessageTypeDiscover:
			typ = dhcpv4.MessageTypeOffer
		case dhcpv4.MessageTypeRequest:
			typ = dhcpv4.MessageTypeAck
		default:
			continue
		}
		reply, err := dhcpv4.NewReplyFromRequest(req,
			dhcpv4.WithMessageType(typ),
			dhcpv4.WithYourIP(lease),
			dhcpv4.WithServerIP(server),
			dhcpv4.WithOption(dhcpv4.OptServerIdentifier(server)),
			dhcpv4.WithNetmask(net.CIDRMask(24, 32)),
			dhcpv4.WithRouter(server),
			dhcpv4.WithDNS(server),
			dhcpv4.WithLeaseTime(3600),
		)
		if err != nil {
			t.Errorf("build dhcp reply: %v", err)
			return
		}
		frame := udpFrame(serverMAC, net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, server, net.IPv4bcast, 67, 68, reply.ToBytes())
		if _, err := conn.WriteToUnix(frame, to); err != nil {
			t.Errorf("send dhcp reply: %v", err)
			return
		}
		if typ == dhcpv4.MessageTypeAck {
			acks++
		}
	}
}

// parseDHCPFrame returns the DHCP message in an Ethernet/IPv4/UDP frame to
// port 67.
func parseDHCPFrame(f []byte) (*dhcpv4.DHCPv4, bool) {
	if len(f) < 14+20+8 || binary.BigEndian.Uint16(f[12:14]) != 0x0800 {
		return nil, false
	}
	ip := f[14:]
	ihl := int(ip[0]&0x0f) * 4
	if ip[9] != 17 || len(ip) < ihl+8 {
		return nil, false
	}
	udp := ip[ihl:]
	if binary.BigEndian.Uint16(udp[2:4]) != 67 {
		return nil, false
	}
	m, err := dhcpv4.FromBytes(udp[8:])
	return m, err == nil
}

// udpFrame builds an Ethernet/IPv4/UDP frame (UDP checksum 0: none, which
// IPv4 allows).
func udpFrame(src, dst net.HardwareAddr, sip, dip net.IP, sport, dport uint16, payload []byte) []byte {
	f := make([]byte, 14+20+8+len(payload))
	copy(f[0:6], dst)
	copy(f[6:12], src)
	binary.BigEndian.PutUint16(f[12:14], 0x0800)
	ip := f[14:34]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:4], uint16(20+8+len(payload)))
	ip[8] = 64
	ip[9] = 17
	copy(ip[12:16], sip.To4())
	copy(ip[16:20], dip.To4())
	var sum uint32
	for i := 0; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(ip[i : i+2]))
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	binary.BigEndian.PutUint16(ip[10:12], ^uint16(sum))
	udp := f[34:42]
	binary.BigEndian.PutUint16(udp[0:2], sport)
	binary.BigEndian.PutUint16(udp[2:4], dport)
	binary.BigEndian.PutUint16(udp[4:6], uint16(8+len(payload)))
	copy(f[42:], payload)
	return f
}
