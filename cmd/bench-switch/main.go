// Command bench-switch measures the netswitch data path against a Linux
// kernel bridge between two TAP devices and Debian's vde_switch, with one
// traffic generator: a sender that pushes batches of 32 frames from one port
// and a receiver that counts what arrives at another. It prints a table and
// a last line "ratio_vs_vde=X ratio_vs_bridge=Y", our 1500-byte frames/s
// over theirs.
//
// Each switch is driven through the best interface it offers: datagram
// unix sockets with sendmmsg/recvmmsg for netswitch and vde_switch (its
// data socket protocol, which is what libvdeplug speaks), one read or write
// per frame for the TAP devices (the kernel has no batch call for a TAP
// descriptor). The bridge and its TAPs live in a network namespace made by
// the bench (needs root); vde_switch is a child process in a temporary
// directory. Everything is removed before the command exits.
package main

import (
	"bytes"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/stackvm/stack/netswitch"
)

const batch = 32

var (
	duration = flag.Duration("duration", time.Second, "measuring time per case and round")
	warmup   = flag.Duration("warmup", 300*time.Millisecond, "traffic before measuring starts")
	skipVDE  = flag.Bool("no-vde", false, "skip vde_switch")
	skipBr   = flag.Bool("no-bridge", false, "skip the kernel bridge")
	rounds   = flag.Int("rounds", 3, "runs of every case; the median is reported")
)

var (
	macA = [6]byte{0x52, 0x54, 0, 0xbe, 0, 0xa}
	macB = [6]byte{0x52, 0x54, 0, 0xbe, 0, 0xb}
)

// endpoint is one side of the generator.
type endpoint interface {
	send(frames [][]byte) error
	// recv receives into bufs and returns how many frames, 0 on timeout.
	recv(bufs [][]byte) (int, error)
	close()
}

type result struct {
	name   string
	ports  int
	size   int
	frames float64 // per second
	cpu    float64 // CPU ns per frame
	// Spread over the rounds.
	min, max float64
}

func main() {
	flag.Parse()
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench-switch:", err)
		os.Exit(1)
	}
}

func run() error {
	dir, err := os.MkdirTemp("", "bench-switch-")
	if err != nil {
		return fmt.Errorf("create temp dir: %w", err)
	}
	defer os.RemoveAll(dir)

	// The cases run round-robin, *rounds times, and each reports its
	// median: the machine's load changes during a run, and interleaving
	// spreads that over every switch alike.
	type bcase struct {
		name string
		run  func(round int) (result, error)
	}
	var cases []bcase
	for _, idle := range []int{0, 8} {
		for _, size := range []int{64, 1500} {
			idle, size := idle, size
			cases = append(cases, bcase{"netswitch", func(r int) (result, error) {
				return benchNetswitch(filepath.Join(dir, fmt.Sprintf("ns%d-%d-%d", idle, size, r)), idle, size)
			}})
		}
	}
	for _, size := range []int{64, 1500} {
		size := size
		if !*skipBr {
			cases = append(cases, bcase{"bridge", func(int) (result, error) { return benchBridge(size) }})
		}
		if !*skipVDE {
			cases = append(cases, bcase{"vde_switch", func(r int) (result, error) {
				return benchVDE(filepath.Join(dir, fmt.Sprintf("vde-%d-%d", size, r)), size)
			}})
		}
	}
	samples := make([][]result, len(cases))
	for round := 0; round < *rounds; round++ {
		for i, c := range cases {
			r, err := c.run(round)
			if err != nil {
				return fmt.Errorf("%s: %w", c.name, err)
			}
			samples[i] = append(samples[i], r)
		}
	}
	var results []result
	for _, ss := range samples {
		sort.Slice(ss, func(a, b int) bool { return ss[a].frames < ss[b].frames })
		m := ss[len(ss)/2]
		m.min, m.max = ss[0].frames, ss[len(ss)-1].frames
		cpus := make([]float64, len(ss))
		for i, r := range ss {
			cpus[i] = r.cpu
		}
		sort.Float64s(cpus)
		m.cpu = cpus[len(cpus)/2]
		results = append(results, m)
	}

	fmt.Printf("median of %d rounds of %v each, GOMAXPROCS=%d\n", *rounds, *duration, runtime.GOMAXPROCS(0))
	fmt.Printf("%-12s %6s %6s %14s %10s %22s %14s\n", "switch", "ports", "bytes", "frames/s", "Gbit/s", "min..max frames/s", "cpu ns/frame")
	get := func(name string, ports, size int) float64 {
		for _, r := range results {
			if r.name == name && r.ports == ports && r.size == size {
				return r.frames
			}
		}
		return 0
	}
	for _, r := range results {
		fmt.Printf("%-12s %6d %6d %14.0f %10.3f %22s %14.0f\n", r.name, r.ports, r.size, r.frames, r.frames*float64(r.size)*8/1e9,
			fmt.Sprintf("%.0f..%.0f", r.min, r.max), r.cpu)
	}
	ours := get("netswitch", 2, 1500)
	idle := get("netswitch", 10, 1500)
	cpuOf := func(name string, ports, size int) float64 {
		for _, r := range results {
			if r.name == name && r.ports == ports && r.size == size {
				return r.cpu
			}
		}
		return 0
	}
	fmt.Printf("idle_port_cost=%.1f%% (frames/s) %.1f%% (cpu/frame)\n", 100*(1-idle/ours),
		100*(cpuOf("netswitch", 10, 1500)/cpuOf("netswitch", 2, 1500)-1))
	ratio := func(theirs float64) string {
		if theirs == 0 {
			return "n/a"
		}
		return fmt.Sprintf("%.2f", ours/theirs)
	}
	fmt.Printf("ratio_vs_vde=%s ratio_vs_bridge=%s\n", ratio(get("vde_switch", 2, 1500)), ratio(get("bridge", 2, 1500)))
	return nil
}

// measure drives traffic from a to b and returns frames/s received at b and
// the CPU time spent per received frame by this process (generator and, for
// netswitch, the switch; for the bridge the kernel's forwarding, which runs
// in the generator's system calls) plus, when extPID is set, that process's
// (vde_switch). CPU per frame depends far less on the machine's other load
// than frames/s does.
func measure(a, b endpoint, size int, extPID int) (float64, float64, error) {
	frames := make([][]byte, batch)
	for i := range frames {
		frames[i] = makeFrame(macB, macA, size)
	}
	var stop atomic.Bool
	var received atomic.Uint64
	var wg sync.WaitGroup
	var sendErr error
	wg.Add(2)
	go func() {
		defer wg.Done()
		runtime.LockOSThread()
		for !stop.Load() {
			if err := a.send(frames); err != nil {
				sendErr = err
				return
			}
		}
	}()
	go func() {
		defer wg.Done()
		runtime.LockOSThread()
		bufs := make([][]byte, batch)
		for i := range bufs {
			bufs[i] = make([]byte, 2048)
		}
		for !stop.Load() {
			n, err := b.recv(bufs)
			if err != nil {
				return
			}
			// Count only the generator's frames (bridges see IPv6 chatter).
			for i := 0; i < n; i++ {
				if bufs[i][11] == macA[5] && bufs[i][10] == macA[4] {
					received.Add(1)
				}
			}
		}
	}()
	time.Sleep(*warmup)
	start, n0, c0 := time.Now(), received.Load(), cpuTime(extPID)
	time.Sleep(*duration)
	el, n1, c1 := time.Since(start), received.Load(), cpuTime(extPID)
	stop.Store(true)
	wg.Wait()
	if sendErr != nil {
		return 0, 0, fmt.Errorf("send: %w", sendErr)
	}
	if n1 == n0 {
		return 0, 0, fmt.Errorf("no frames arrived")
	}
	return float64(n1-n0) / el.Seconds(), float64(c1-c0) / float64(n1-n0), nil
}

// cpuTime is this process's CPU time in ns, plus pid's when pid > 0.
func cpuTime(pid int) int64 {
	var ru unix.Rusage
	unix.Getrusage(unix.RUSAGE_SELF, &ru)
	t := ru.Utime.Nano() + ru.Stime.Nano()
	if pid > 0 {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err == nil {
			// Fields after the command name (which may hold spaces):
			// utime and stime are fields 14 and 15, in clock ticks.
			if i := bytes.LastIndexByte(b, ')'); i > 0 {
				f := strings.Fields(string(b[i+1:]))
				if len(f) > 13 {
					ut, _ := strconv.ParseInt(f[11], 10, 64)
					st, _ := strconv.ParseInt(f[12], 10, 64)
					t += (ut + st) * int64(time.Second) / clockTicks
				}
			}
		}
	}
	return t
}

// clockTicks is USER_HZ, 100 on every Linux architecture Go supports.
const clockTicks = 100

func makeFrame(dst, src [6]byte, size int) []byte {
	f := make([]byte, size)
	copy(f[0:6], dst[:])
	copy(f[6:12], src[:])
	binary.BigEndian.PutUint16(f[12:14], 0x88b5) // local experimental
	return f
}

// learn has b announce its address so that every switch forwards a to b as
// known unicast.
func learn(b endpoint) error {
	f := makeFrame([6]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, macB, 64)
	for i := 0; i < 3; i++ {
		if err := b.send([][]byte{f}); err != nil {
			return err
		}
		time.Sleep(10 * time.Millisecond)
	}
	return nil
}

// dgramEnd is a blocking unix datagram socket, connected.
type dgramEnd struct {
	fd   int
	hdrs [batch]mmsghdr
	iovs [batch]unix.Iovec
}

type mmsghdr struct {
	hdr unix.Msghdr
	n   uint32
	_   [4]byte
}

func newDgramEnd(local string) (*dgramEnd, error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("create socket: %w", err)
	}
	for _, o := range []int{unix.SO_SNDBUFFORCE, unix.SO_RCVBUFFORCE} {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, o, 4<<20)
	}
	// Timeouts keep a blocked generator responsive to the end of a run.
	tv := unix.Timeval{Usec: 100000}
	for _, o := range []int{unix.SO_RCVTIMEO, unix.SO_SNDTIMEO} {
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, o, &tv); err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("set socket timeout: %w", err)
		}
	}
	if local != "" {
		if err := unix.Bind(fd, &unix.SockaddrUnix{Name: local}); err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("bind %s: %w", local, err)
		}
	}
	return &dgramEnd{fd: fd}, nil
}

func (d *dgramEnd) connect(path string) error {
	if err := unix.Connect(d.fd, &unix.SockaddrUnix{Name: path}); err != nil {
		return fmt.Errorf("connect %s: %w", path, err)
	}
	return nil
}

func (d *dgramEnd) send(frames [][]byte) error {
	for i, f := range frames {
		d.iovs[i].Base = &f[0]
		d.iovs[i].SetLen(len(f))
		d.hdrs[i].hdr = unix.Msghdr{Iov: &d.iovs[i], Iovlen: 1}
	}
	for off := 0; off < len(frames); {
		n, _, e := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(d.fd), uintptr(unsafe.Pointer(&d.hdrs[off])), uintptr(len(frames)-off), 0, 0, 0)
		if e == unix.EINTR {
			continue
		}
		if e == unix.EAGAIN || e == unix.ENOBUFS {
			return nil // timed out; the caller checks whether to stop
		}
		if e != 0 {
			return e
		}
		off += int(n)
	}
	return nil
}

func (d *dgramEnd) recv(bufs [][]byte) (int, error) {
	for i, b := range bufs {
		d.iovs[i].Base = &b[0]
		d.iovs[i].SetLen(len(b))
		d.hdrs[i].hdr = unix.Msghdr{Iov: &d.iovs[i], Iovlen: 1}
	}
	n, _, e := unix.Syscall6(unix.SYS_RECVMMSG, uintptr(d.fd), uintptr(unsafe.Pointer(&d.hdrs[0])), uintptr(len(bufs)), unix.MSG_WAITFORONE, 0, 0)
	if e == unix.EAGAIN || e == unix.EINTR {
		return 0, nil
	}
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

func (d *dgramEnd) close() { unix.Close(d.fd) }

func benchNetswitch(dir string, idle, size int) (result, error) {
	res := result{name: "netswitch", ports: 2 + idle, size: size}
	sw, err := netswitch.New(netswitch.Config{Name: "bench", Dir: filepath.Join(dir, "sw"), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return res, err
	}
	defer sw.Close()
	var ends []*dgramEnd
	defer func() {
		for _, e := range ends {
			e.close()
		}
	}()
	for i := 0; i < 2+idle; i++ {
		local := filepath.Join(dir, fmt.Sprintf("vm%d.sock", i))
		e, err := newDgramEnd(local)
		if err != nil {
			return res, err
		}
		ends = append(ends, e)
		sp, err := sw.AddDgramPort(fmt.Sprintf("vm%d", i), local)
		if err != nil {
			return res, err
		}
		if err := e.connect(sp); err != nil {
			return res, err
		}
	}
	// Idle VMs announce themselves once, like booted guests.
	for i := 2; i < len(ends); i++ {
		m := macB
		m[5] = byte(0x10 + i)
		if err := ends[i].send([][]byte{makeFrame([6]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, m, 64)}); err != nil {
			return res, err
		}
	}
	if err := learn(ends[1]); err != nil {
		return res, err
	}
	res.frames, res.cpu, err = measure(ends[0], ends[1], size, 0)
	return res, err
}

// tapEnd is a TAP descriptor: one frame per read or write.
type tapEnd struct{ f *os.File }

func (t *tapEnd) send(frames [][]byte) error {
	for _, f := range frames {
		if _, err := unix.Write(int(t.f.Fd()), f); err != nil && err != unix.EAGAIN && err != unix.ENOBUFS {
			return err
		}
	}
	return nil
}

func (t *tapEnd) recv(bufs [][]byte) (int, error) {
	fd := int(t.f.Fd())
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	if n, err := unix.Poll(pfd, 100); n <= 0 {
		if err != nil && err != unix.EINTR {
			return 0, err
		}
		return 0, nil
	}
	k := 0
	for k < len(bufs) {
		n, err := unix.Read(fd, bufs[k])
		if err != nil {
			break
		}
		if n < 12 {
			continue
		}
		k++
	}
	return k, nil
}

func (t *tapEnd) close() { t.f.Close() }

// benchBridge builds br0 with tap0 and tap1 in a fresh network namespace.
func benchBridge(size int) (res result, err error) {
	res = result{name: "bridge", ports: 2, size: size}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return res, fmt.Errorf("get network namespace: %w", err)
	}
	defer orig.Close()
	ns, err := netns.New() // also enters it
	if err != nil {
		return res, fmt.Errorf("create network namespace (needs root): %w", err)
	}
	// The namespace lives as long as ns is open; closing it removes the
	// bridge and whatever TAP is left.
	defer ns.Close()
	defer netns.Set(orig)

	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}}
	if err := netlink.LinkAdd(br); err != nil {
		return res, fmt.Errorf("add bridge: %w", err)
	}
	var ends []*tapEnd
	defer func() {
		for _, e := range ends {
			e.close()
		}
	}()
	for i := 0; i < 2; i++ {
		la := netlink.NewLinkAttrs()
		la.Name = fmt.Sprintf("tap%d", i)
		tap := &netlink.Tuntap{LinkAttrs: la, Mode: netlink.TUNTAP_MODE_TAP, Flags: netlink.TUNTAP_NO_PI | netlink.TUNTAP_ONE_QUEUE, Queues: 1, NonPersist: true}
		if err := netlink.LinkAdd(tap); err != nil {
			return res, fmt.Errorf("add %s: %w", la.Name, err)
		}
		ends = append(ends, &tapEnd{f: tap.Fds[0]})
		if err := netlink.LinkSetMaster(tap, br); err != nil {
			return res, fmt.Errorf("enslave %s: %w", la.Name, err)
		}
		if err := netlink.LinkSetUp(tap); err != nil {
			return res, fmt.Errorf("up %s: %w", la.Name, err)
		}
	}
	if err := netlink.LinkSetUp(br); err != nil {
		return res, fmt.Errorf("up bridge: %w", err)
	}
	if err := netns.Set(orig); err != nil {
		return res, fmt.Errorf("leave namespace: %w", err)
	}
	time.Sleep(100 * time.Millisecond)
	if err := learn(ends[1]); err != nil {
		return res, err
	}
	res.frames, res.cpu, err = measure(ends[0], ends[1], size, 0)
	return res, err
}

// benchVDE starts vde_switch and plugs two datagram sockets into it with
// the libvdeplug control protocol (request_v3 on the control socket, then
// datagrams to the data socket it names).
func benchVDE(dir string, size int) (res result, err error) {
	res = result{name: "vde_switch", ports: 2, size: size}
	bin, err := exec.LookPath("vde_switch")
	if err != nil {
		return res, fmt.Errorf("find vde_switch (apt package vde2): %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return res, err
	}
	ctl := filepath.Join(dir, "ctl")
	cmd := exec.Command(bin, "--sock", ctl)
	var out bytes.Buffer // shown only when vde_switch fails us
	cmd.Stdout, cmd.Stderr = &out, &out
	// vde_switch reads commands from stdin and exits at its end: hand it
	// a pipe that stays open while it runs.
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return res, fmt.Errorf("start vde_switch: %w", err)
	}
	if err := cmd.Start(); err != nil {
		return res, fmt.Errorf("start vde_switch: %w", err)
	}
	defer func() {
		cmd.Process.Kill()
		stdin.Close()
		cmd.Wait()
	}()
	for i := 0; ; i++ {
		if _, err := os.Stat(filepath.Join(ctl, "ctl")); err == nil {
			break
		}
		if i > 200 {
			return res, fmt.Errorf("vde_switch did not create %s: %s", ctl, out.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	var ends []*dgramEnd
	var ctls []int
	defer func() {
		for _, e := range ends {
			e.close()
		}
		for _, c := range ctls {
			unix.Close(c)
		}
	}()
	for i := 0; i < 2; i++ {
		local := filepath.Join(dir, fmt.Sprintf("plug%d", i))
		e, err := newDgramEnd(local)
		if err != nil {
			return res, err
		}
		ends = append(ends, e)
		c, data, err := vdePlug(filepath.Join(ctl, "ctl"), local)
		if err != nil {
			return res, err
		}
		ctls = append(ctls, c)
		if err := e.connect(data); err != nil {
			return res, err
		}
	}
	if err := learn(ends[1]); err != nil {
		return res, err
	}
	res.frames, res.cpu, err = measure(ends[0], ends[1], size, cmd.Process.Pid)
	return res, err
}

// vdePlug asks vde_switch for a port; the control connection must stay open
// for the port to live. It returns the data socket path to send to.
func vdePlug(ctlPath, local string) (int, string, error) {
	c, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, "", err
	}
	if err := unix.Connect(c, &unix.SockaddrUnix{Name: ctlPath}); err != nil {
		unix.Close(c)
		return -1, "", fmt.Errorf("connect %s: %w", ctlPath, err)
	}
	// struct request_v3 { u32 magic; u32 version; enum type; struct
	// sockaddr_un sock; char description[128]; } packed.
	req := make([]byte, 4+4+4+110+128)
	binary.LittleEndian.PutUint32(req[0:], 0xfeedface)
	binary.LittleEndian.PutUint32(req[4:], 3)
	binary.LittleEndian.PutUint32(req[8:], 0) // REQ_NEW_CONTROL
	binary.LittleEndian.PutUint16(req[12:], unix.AF_UNIX)
	copy(req[14:14+108], local)
	copy(req[122:], "bench-switch")
	if _, err := unix.Write(c, req); err != nil {
		unix.Close(c)
		return -1, "", fmt.Errorf("request vde port: %w", err)
	}
	reply := make([]byte, 110)
	n, err := unix.Read(c, reply)
	if err != nil || n < 3 {
		unix.Close(c)
		return -1, "", fmt.Errorf("read vde reply (%d bytes): %w", n, errors.Join(err, errors.New("short reply")))
	}
	path := reply[2:n]
	for i, b := range path {
		if b == 0 {
			path = path[:i]
			break
		}
	}
	return c, string(path), nil
}
