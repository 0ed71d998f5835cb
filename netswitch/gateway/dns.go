package gateway

import (
	"context"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/miekg/dns"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
)

// startDNS serves DNS on UDP and TCP port 53 of the gateway address.
func (g *Gateway) startDNS() error {
	addr := fullAddr(g.cfg.GatewayIP, 53)
	pc, err := gonet.DialUDP(g.s, &addr, nil, ipv4.ProtocolNumber)
	if err != nil {
		return fmt.Errorf("open dns socket: %w", err)
	}
	ln, err := gonet.ListenTCP(g.s, addr, ipv4.ProtocolNumber)
	if err != nil {
		pc.Close()
		return fmt.Errorf("listen dns tcp: %w", err)
	}
	h := dns.HandlerFunc(g.serveDNS)
	udpSrv := &dns.Server{PacketConn: pc, Handler: h}
	tcpSrv := &dns.Server{Listener: ln, Handler: h}
	for _, srv := range []*dns.Server{udpSrv, tcpSrv} {
		srv := srv
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		g.wg.Add(1)
		go func() {
			defer g.wg.Done()
			if err := srv.ActivateAndServe(); err != nil && g.ctx.Err() == nil {
				g.log.Warn("dns server stopped", "err", err)
			}
		}()
		<-started
		g.addCloser(srv.Shutdown)
	}
	return nil
}

// Names the gateway owns: "<vm>" (one label) and "<vm>.<namespace>.internal".
// Everything under ".internal" and every single label is answered here and
// nowhere else; other names go upstream when egress is on and are refused
// when it is off (the guests could not reach the answer anyway).
func (g *Gateway) serveDNS(w dns.ResponseWriter, req *dns.Msg) {
	m := new(dns.Msg)
	if len(req.Question) != 1 || req.Opcode != dns.OpcodeQuery {
		m.SetRcode(req, dns.RcodeNotImplemented)
		w.WriteMsg(m)
		return
	}
	q := req.Question[0]
	name := strings.ToLower(strings.TrimSuffix(q.Name, "."))
	zone := strings.ToLower(g.cfg.Namespace) + ".internal"
	local := ""
	switch {
	case !strings.Contains(name, "."):
		local = name
	case strings.HasSuffix(name, "."+zone):
		local = strings.TrimSuffix(name, "."+zone)
		if strings.Contains(local, ".") {
			local = "" // no such name below a VM
			m.SetRcode(req, dns.RcodeNameError)
			w.WriteMsg(m)
			return
		}
	case name == zone || name == "internal" || strings.HasSuffix(name, ".internal"):
		m.SetRcode(req, dns.RcodeNameError)
		m.Authoritative = true
		w.WriteMsg(m)
		return
	default:
		g.forwardDNS(w, req)
		return
	}
	m.SetReply(req)
	m.Authoritative = true
	a, ok := g.lookupHost(local)
	if !ok {
		m.SetRcode(req, dns.RcodeNameError)
		w.WriteMsg(m)
		return
	}
	if q.Qclass == dns.ClassINET && (q.Qtype == dns.TypeA || q.Qtype == dns.TypeANY) {
		m.Answer = append(m.Answer, &dns.A{
			Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 5},
			A:   net.IP(a.AsSlice()),
		})
	}
	// Other types for a known name: NOERROR with no data.
	w.WriteMsg(m)
}

// forwardDNS relays a query for an outside name to the host's resolvers.
func (g *Gateway) forwardDNS(w dns.ResponseWriter, req *dns.Msg) {
	if !g.cfg.Egress {
		m := new(dns.Msg)
		m.SetRcode(req, dns.RcodeRefused)
		w.WriteMsg(m)
		return
	}
	servers := g.cfg.Upstream
	if len(servers) == 0 {
		if cc, err := dns.ClientConfigFromFile("/etc/resolv.conf"); err == nil {
			for _, s := range cc.Servers {
				servers = append(servers, net.JoinHostPort(s, cc.Port))
			}
		}
	}
	network := "udp"
	if _, ok := w.RemoteAddr().(*net.TCPAddr); ok {
		network = "tcp"
	}
	c := &dns.Client{Net: network, Timeout: 3 * time.Second}
	ctx, cancel := context.WithTimeout(g.ctx, 5*time.Second)
	defer cancel()
	for _, s := range servers {
		conn, err := g.cfg.Dial(ctx, network, s)
		if err != nil {
			continue
		}
		resp, _, err := c.ExchangeWithConnContext(ctx, req, &dns.Conn{Conn: conn})
		conn.Close()
		if err == nil {
			w.WriteMsg(resp)
			return
		}
	}
	m := new(dns.Msg)
	m.SetRcode(req, dns.RcodeServerFailure)
	w.WriteMsg(m)
}
