package gateway

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// udpIdle is how long a published UDP flow lives without traffic (egress
// flows: Limits.UDPIdle).
const udpIdle = 60 * time.Second

// Dial timeouts of egress flows.
const (
	tcpDialTimeout = 10 * time.Second
	udpDialTimeout = 5 * time.Second
)

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
	hostIP := g.cfg.PublishHost
	if f.HostIP.IsValid() {
		hostIP = f.HostIP
	}
	host := netip.AddrPortFrom(hostIP, uint16(f.HostPort)).String()
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
			splice(ctx, c, gc, nil)
		}()
	}
}

// closeWriter is a connection that can half-close.
type closeWriter interface{ CloseWrite() error }

// splice copies both ways until both directions end or ctx is done,
// passing half-closes on. touch, when not nil, is called after each read
// that moved data.
func splice(ctx context.Context, a, b net.Conn, touch func()) {
	done := make(chan struct{})
	stop := context.AfterFunc(ctx, func() { a.Close(); b.Close() })
	defer stop()
	cp := func(dst, src net.Conn) {
		copyConn(dst, src, touch)
		if cw, ok := dst.(closeWriter); ok {
			cw.CloseWrite()
		} else {
			dst.Close()
		}
	}
	go func() {
		cp(a, b)
		close(done)
	}()
	cp(b, a)
	<-done
	a.Close()
	b.Close()
}

// Buffers of copyConn: an idle connection waits in a read on a small buffer
// of its own; a read that fills it means more is coming, and the copy takes
// a large buffer from the pool until a read comes back short. So thousands
// of idle connections cost 2 KiB a direction, not 32 KiB.
const (
	smallCopyBuf = 2 << 10
	largeCopyBuf = 32 << 10
)

var largeBufs = sync.Pool{New: func() any { b := make([]byte, largeCopyBuf); return &b }}

// copyConn copies src to dst until either fails (io.Copy would hold a
// 32 KiB buffer for the connection's whole life).
func copyConn(dst, src net.Conn, touch func()) {
	small := make([]byte, smallCopyBuf)
	buf := small
	var large *[]byte
	defer func() {
		if large != nil {
			largeBufs.Put(large)
		}
	}()
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if touch != nil {
				touch()
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
		switch {
		case large == nil && n == len(buf):
			large = largeBufs.Get().(*[]byte)
			buf = *large
		case large != nil && n < len(buf)/2:
			largeBufs.Put(large)
			large, buf = nil, small
		}
	}
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

// refused reports whether egress refuses a guest's destination (see
// egressPolicy), and counts and logs a refusal.
func (g *Gateway) refused(src, dst netip.Addr, port uint16, proto string) bool {
	why := g.policy.refuse(dst)
	if why == "" {
		return false
	}
	g.stats.egressRefused.Add(1)
	g.log.Debug("egress refused", "from", src, "to", netip.AddrPortFrom(dst, port), "protocol", proto, "reason", why)
	return true
}

// egressTCP terminates a guest's TCP connection to an outside address and
// opens it again from the host. The connection is a flow from the SYN on,
// so that dials in progress count against the guest's bound too (and an
// evicted dial is cancelled).
func (g *Gateway) egressTCP(r *tcp.ForwarderRequest) {
	id := r.ID()
	src, dst := netip.AddrFrom4(id.RemoteAddress.As4()), netip.AddrFrom4(id.LocalAddress.As4())
	if g.refused(src, dst, id.LocalPort, "tcp") {
		r.Complete(true)
		return
	}
	f := g.flows.admit(src, false)
	addr := netip.AddrPortFrom(dst, id.LocalPort).String()
	ctx, cancel := context.WithTimeout(g.ctx, tcpDialTimeout)
	f.onClose(cancel)
	out, err := g.cfg.Dial(ctx, "tcp", addr)
	cancel()
	if err != nil {
		g.flows.release(f)
		r.Complete(true) // the guest sees a reset, as from the real host
		return
	}
	f.onClose(func() { out.Close() })
	var wq waiter.Queue
	ep, terr := r.CreateEndpoint(&wq)
	if terr != nil || f.isClosed() {
		if terr == nil {
			ep.Abort()
		}
		g.flows.release(f)
		r.Complete(true)
		return
	}
	r.Complete(false)
	f.replied.Store(true)
	in := gonet.NewTCPConn(&wq, ep)
	f.onClose(func() { in.Close() })
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		defer g.flows.release(f)
		splice(g.ctx, in, out, func() { g.flows.touch(f) })
	}()
}

// egressUDP relays a guest's UDP flow to an outside address from the host.
// The flow holds no buffer while idle: each side waits for a datagram to
// be ready before taking a buffer from the pool to carry it.
func (g *Gateway) egressUDP(r *udp.ForwarderRequest) bool {
	id := r.ID()
	src, dst := netip.AddrFrom4(id.RemoteAddress.As4()), netip.AddrFrom4(id.LocalAddress.As4())
	if g.refused(src, dst, id.LocalPort, "udp") {
		return false
	}
	f := g.flows.admit(src, true)
	var wq waiter.Queue
	ep, terr := r.CreateEndpoint(&wq)
	if terr != nil {
		g.flows.release(f)
		return false
	}
	in := gonet.NewUDPConn(&wq, ep)
	f.onClose(func() { in.Close() })
	ctx, cancel := context.WithTimeout(g.ctx, udpDialTimeout)
	out, err := g.cfg.Dial(ctx, "udp", netip.AddrPortFrom(dst, id.LocalPort).String())
	cancel()
	if err != nil {
		g.flows.release(f)
		return true
	}
	f.onClose(func() { out.Close() })
	stop := context.AfterFunc(g.ctx, f.close)
	f.onClose(func() { stop() })
	g.wg.Add(2)
	go func() {
		defer g.wg.Done()
		defer g.flows.release(f)
		g.udpGuestToHost(f, ep, &wq, out)
	}()
	go func() {
		defer g.wg.Done()
		defer g.flows.release(f)
		g.udpHostToGuest(f, out, in)
	}()
	return true
}

// datagrams are the buffers that carry one datagram each way, taken when a
// datagram is ready and put back once it is sent.
var datagrams = sync.Pool{New: func() any { b := make([]byte, 0, 65536); return &b }}

// datagramWriter collects a datagram the stack hands over in pieces into a
// buffer from the pool, taken at the first piece.
type datagramWriter struct{ b *[]byte }

func (w *datagramWriter) Write(p []byte) (int, error) {
	if w.b == nil {
		w.b = datagrams.Get().(*[]byte)
	}
	*w.b = append(*w.b, p...)
	return len(p), nil
}

func (w *datagramWriter) release() {
	if w.b != nil {
		*w.b = (*w.b)[:0]
		datagrams.Put(w.b)
		w.b = nil
	}
}

// udpGuestToHost carries the guest's datagrams to the host socket until the
// flow closes.
func (g *Gateway) udpGuestToHost(f *flow, ep tcpip.Endpoint, wq *waiter.Queue, out net.Conn) {
	entry, ready := waiter.NewChannelEntry(waiter.ReadableEvents | waiter.EventHUp | waiter.EventErr)
	wq.EventRegister(&entry)
	defer wq.EventUnregister(&entry)
	closed := make(chan struct{})
	f.onClose(func() { close(closed) })
	var w datagramWriter
	for {
		_, terr := ep.Read(&w, tcpip.ReadOptions{})
		if _, wait := terr.(*tcpip.ErrWouldBlock); wait {
			select {
			case <-ready:
				continue
			case <-closed:
				return
			}
		}
		if terr != nil {
			w.release()
			return
		}
		g.flows.touch(f)
		var err error
		if w.b != nil {
			_, err = out.Write(*w.b)
		} else {
			_, err = out.Write(nil) // an empty datagram
		}
		w.release()
		if err != nil && !isTransient(err) {
			return
		}
	}
}

// udpHostToGuest carries the host socket's datagrams to the guest until the
// flow closes.
func (g *Gateway) udpHostToGuest(f *flow, out net.Conn, in *gonet.UDPConn) {
	sc, ok := out.(syscall.Conn)
	var rc syscall.RawConn
	if ok {
		rc, _ = sc.SyscallConn()
	}
	if rc == nil {
		g.udpHostToGuestPlain(f, out, in)
		return
	}
	var (
		buf   *[]byte
		n     int
		errno error
	)
	recv := func(fd uintptr) bool {
		buf = datagrams.Get().(*[]byte)
		n, errno = unix.Read(int(fd), (*buf)[:cap(*buf)])
		if errno == unix.EAGAIN {
			datagrams.Put(buf)
			buf = nil
			return false // wait until readable, with no buffer held
		}
		return true
	}
	for {
		if err := rc.Read(recv); err != nil {
			return // closed
		}
		if errno != nil {
			datagrams.Put(buf)
			if isTransient(errno) {
				continue
			}
			return
		}
		f.replied.Store(true)
		g.flows.touch(f)
		in.Write((*buf)[:n])
		datagrams.Put(buf)
	}
}

// udpHostToGuestPlain is udpHostToGuest for a connection of the configured
// Dial without a descriptor to wait on: it holds a buffer while it reads.
func (g *Gateway) udpHostToGuestPlain(f *flow, out net.Conn, in *gonet.UDPConn) {
	b := datagrams.Get().(*[]byte)
	defer datagrams.Put(b)
	for {
		n, err := out.Read((*b)[:cap(*b)])
		if err != nil {
			return
		}
		f.replied.Store(true)
		g.flows.touch(f)
		in.Write((*b)[:n])
	}
}

// isTransient reports a UDP socket error that a later datagram may not
// see: an ICMP error from the destination, reported on the next call.
func isTransient(err error) bool {
	return errors.Is(err, unix.ECONNREFUSED) || errors.Is(err, unix.EHOSTUNREACH) || errors.Is(err, unix.ENETUNREACH) || errors.Is(err, unix.EMSGSIZE)
}

// sweepFlows closes idle UDP flows every second until the gateway closes.
func (g *Gateway) sweepFlows() {
	defer g.wg.Done()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-g.ctx.Done():
			return
		case now := <-t.C:
			g.flows.sweep(now)
		}
	}
}
