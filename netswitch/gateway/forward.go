package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// udpIdle is how long a UDP flow (published or egress) lives without
// traffic.
const udpIdle = 60 * time.Second

// publisher is one published port: a host listener and its flows.
type publisher struct {
	fwd    Forward
	ln     net.Listener   // tcp
	pc     net.PacketConn // udp
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func (p *publisher) close() {
	p.cancel()
	if p.ln != nil {
		p.ln.Close()
	}
	if p.pc != nil {
		p.pc.Close()
	}
	p.wg.Wait()
}

// setPublishLocked makes the published ports exactly fs: listeners that
// stay are kept (their connections live on), others are closed or opened.
func (g *Gateway) setPublishLocked(fs []Forward) error {
	want := map[string]Forward{}
	for _, f := range fs {
		if f.proto() != "tcp" && f.proto() != "udp" {
			return fmt.Errorf("publish %d: protocol %q", f.HostPort, f.Protocol)
		}
		if f.HostPort < 1 || f.HostPort > 65535 || f.GuestPort < 1 || f.GuestPort > 65535 || !f.GuestIP.Is4() {
			return fmt.Errorf("publish %s -> %v:%d: bad port or address", f.key(), f.GuestIP, f.GuestPort)
		}
		if _, dup := want[f.key()]; dup {
			return fmt.Errorf("publish %s: twice", f.key())
		}
		want[f.key()] = f
	}
	for k, p := range g.publish {
		if f, ok := want[k]; !ok || f != p.fwd {
			p.close()
			delete(g.publish, k)
		}
	}
	var errs []error
	for k, f := range want {
		if _, ok := g.publish[k]; ok {
			continue
		}
		p, err := g.startPublisher(f)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		g.publish[k] = p
	}
	return errors.Join(errs...)
}

func (g *Gateway) startPublisher(f Forward) (*publisher, error) {
	ctx, cancel := context.WithCancel(g.ctx)
	p := &publisher{fwd: f, cancel: cancel}
	host := netip.AddrPortFrom(g.cfg.PublishHost, uint16(f.HostPort)).String()
	switch f.proto() {
	case "tcp":
		ln, err := net.Listen("tcp", host)
		if err != nil {
			cancel()
			return nil, fmt.Errorf("publish %s: %w", f.key(), err)
		}
		p.ln = ln
		p.wg.Add(1)
		go g.serveTCPPublish(ctx, p)
	case "udp":
		pc, err := net.ListenPacket("udp", host)
		if err != nil {
			cancel()
			return nil, fmt.Errorf("publish %s: %w", f.key(), err)
		}
		p.pc = pc
		p.wg.Add(1)
		go g.serveUDPPublish(ctx, p)
	}
	g.log.Debug("published", "host", host, "guest", netip.AddrPortFrom(f.GuestIP, uint16(f.GuestPort)), "protocol", f.proto())
	return p, nil
}

func (g *Gateway) serveTCPPublish(ctx context.Context, p *publisher) {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			gc, err := gonet.DialContextTCP(dctx, g.s, fullAddr(p.fwd.GuestIP, p.fwd.GuestPort), ipv4.ProtocolNumber)
			cancel()
			if err != nil {
				g.log.Debug("published port: guest unreachable", "port", p.fwd.key(), "err", err)
				c.Close()
				return
			}
			splice(ctx, c, gc)
		}()
	}
}

// closeWriter is a connection that can half-close.
type closeWriter interface{ CloseWrite() error }

// splice copies both ways until both directions end or ctx is done,
// passing half-closes on.
func splice(ctx context.Context, a, b net.Conn) {
	done := make(chan struct{})
	stop := context.AfterFunc(ctx, func() { a.Close(); b.Close() })
	defer stop()
	cp := func(dst, src net.Conn) {
		io.Copy(dst, src)
		if cw, ok := dst.(closeWriter); ok {
			cw.CloseWrite()
		} else {
			dst.Close()
		}
		done <- struct{}{}
	}
	go cp(a, b)
	go cp(b, a)
	<-done
	<-done
	a.Close()
	b.Close()
}

// serveUDPPublish relays datagrams from host clients to the guest, one
// netstack socket per client so that replies find their way back.
func (g *Gateway) serveUDPPublish(ctx context.Context, p *publisher) {
	defer p.wg.Done()
	var mu sync.Mutex
	flows := map[string]*gonet.UDPConn{}
	buf := make([]byte, 65536)
	for {
		n, from, err := p.pc.ReadFrom(buf)
		if err != nil {
			mu.Lock()
			for _, c := range flows {
				c.Close()
			}
			mu.Unlock()
			return
		}
		mu.Lock()
		c := flows[from.String()]
		if c == nil {
			raddr := fullAddr(p.fwd.GuestIP, p.fwd.GuestPort)
			c, err = gonet.DialUDP(g.s, nil, &raddr, ipv4.ProtocolNumber)
			if err != nil {
				mu.Unlock()
				continue
			}
			flows[from.String()] = c
			p.wg.Add(1)
			go func(c *gonet.UDPConn, from net.Addr) {
				defer p.wg.Done()
				b := make([]byte, 65536)
				for {
					c.SetReadDeadline(time.Now().Add(udpIdle))
					n, err := c.Read(b)
					if err != nil {
						break
					}
					p.pc.WriteTo(b[:n], from)
				}
				mu.Lock()
				delete(flows, from.String())
				mu.Unlock()
				c.Close()
			}(c, from)
		}
		mu.Unlock()
		c.Write(buf[:n])
	}
}

// inSubnet reports whether an egress destination is on the network itself
// (other VMs are reached over L2, never through the host).
func (g *Gateway) inSubnet(a netip.Addr) bool { return g.cfg.Subnet.Contains(a) }

// egressTCP terminates a guest's TCP connection to an outside address and
// opens it again from the host.
func (g *Gateway) egressTCP(r *tcp.ForwarderRequest) {
	id := r.ID()
	dst := netip.AddrFrom4(id.LocalAddress.As4())
	if g.inSubnet(dst) || !dst.IsGlobalUnicast() {
		r.Complete(true)
		return
	}
	addr := netip.AddrPortFrom(dst, id.LocalPort).String()
	ctx, cancel := context.WithTimeout(g.ctx, 10*time.Second)
	out, err := g.cfg.Dial(ctx, "tcp", addr)
	cancel()
	if err != nil {
		r.Complete(true) // the guest sees a reset, as from the real host
		return
	}
	var wq waiter.Queue
	ep, terr := r.CreateEndpoint(&wq)
	if terr != nil {
		r.Complete(true)
		out.Close()
		return
	}
	r.Complete(false)
	in := gonet.NewTCPConn(&wq, ep)
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		splice(g.ctx, in, out)
	}()
}

// egressUDP relays a guest's UDP flow to an outside address from the host.
func (g *Gateway) egressUDP(r *udp.ForwarderRequest) bool {
	id := r.ID()
	dst := netip.AddrFrom4(id.LocalAddress.As4())
	if g.inSubnet(dst) || !dst.IsGlobalUnicast() {
		return false
	}
	var wq waiter.Queue
	ep, terr := r.CreateEndpoint(&wq)
	if terr != nil {
		return false
	}
	in := gonet.NewUDPConn(&wq, ep)
	ctx, cancel := context.WithTimeout(g.ctx, 5*time.Second)
	out, err := g.cfg.Dial(ctx, "udp", netip.AddrPortFrom(dst, id.LocalPort).String())
	cancel()
	if err != nil {
		in.Close()
		return true
	}
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		stop := context.AfterFunc(g.ctx, func() { in.Close(); out.Close() })
		defer stop()
		g.wg.Add(1)
		go func() {
			defer g.wg.Done()
			b := make([]byte, 65536)
			for {
				out.SetReadDeadline(time.Now().Add(udpIdle))
				n, err := out.Read(b)
				if err != nil {
					in.Close()
					return
				}
				in.Write(b[:n])
			}
		}()
		b := make([]byte, 65536)
		for {
			in.SetReadDeadline(time.Now().Add(udpIdle))
			n, err := in.Read(b)
			if err != nil {
				break
			}
			out.Write(b[:n])
		}
		out.Close()
		in.Close()
	}()
	return true
}
