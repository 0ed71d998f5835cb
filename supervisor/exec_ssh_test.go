package supervisor

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"

	"github.com/stackvm/stack/hypervisor"
	"github.com/stackvm/stack/internal/filenames"
	"github.com/stackvm/stack/internal/pty"
	"github.com/stackvm/stack/internal/sshkeys"
	"github.com/stackvm/stack/internal/testutil"
	"github.com/stackvm/stack/supervisor/api"
	"github.com/stackvm/stack/supervisor/client"
)

// Every word survives a POSIX shell (dash's sh and bash) exactly, the
// first one included, and env becomes the command's environment.
func TestRemoteCommandQuoting(t *testing.T) {
	words := []string{"", " ", "a b", "it's", "'", "''", `"`, `\`, `\'`, "$HOME", "$(id)", "`id`", "*", "~", "~root",
		"a=b", "-n", "--", "#", "a;b", "a|b", "a&b", "a\nb", "\t", "!", "{a,b}", "[", "if", "é ü 日本", "\x01\x7f"}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 50 {
		b := make([]byte, rng.IntN(12))
		for i := range b {
			b[i] = byte(1 + rng.IntN(255)) // any byte but NUL
		}
		words = append(words, string(b))
	}
	env := map[string]string{"A": "x'y $z", "B_2": "", "LONG": strings.Repeat("'\"", 20)}
	// printf prints each word and the env NUL-terminated; the first word
	// must be a command, so it is printf itself.
	argv := append([]string{"printf", `%s\0`, "--"}, words...)
	for _, shell := range []string{"sh", "bash"} {
		if _, err := exec.LookPath(shell); err != nil {
			t.Logf("no %s here", shell)
			continue
		}
		cmdline, err := remoteCommand(argv, nil)
		if err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(shell, "-c", cmdline).Output()
		if err != nil {
			t.Fatalf("%s: %v", shell, err)
		}
		got := strings.Split(strings.TrimSuffix(string(out), "\x00"), "\x00")
		if want := append([]string{"--"}, words...); !slicesEqual(got, want) {
			t.Errorf("%s: words came back as\n%q\nwant\n%q", shell, got, want)
		}
		cmdline, err = remoteCommand([]string{"sh", "-c", `printf '%s|%s|%s' "$A" "$B_2" "$LONG"`}, env)
		if err != nil {
			t.Fatal(err)
		}
		out, err = exec.Command(shell, "-c", cmdline).Output()
		if want := env["A"] + "||" + env["LONG"]; err != nil || string(out) != want {
			t.Errorf("%s: env came back as %q (%v), want %q", shell, out, err, want)
		}
	}
	// A first word with = is a command name, not an assignment.
	if c, _ := remoteCommand([]string{"a=b"}, nil); c != `'a=b'` {
		t.Errorf("a=b quoted as %s", c)
	}
}

func slicesEqual(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestRemoteCommandRefuses(t *testing.T) {
	for _, c := range []struct {
		argv []string
		env  map[string]string
	}{
		{nil, nil},
		{[]string{"a\x00b"}, nil},
		{[]string{"true"}, map[string]string{"A-B": "x"}},
		{[]string{"true"}, map[string]string{"1A": "x"}},
		{[]string{"true"}, map[string]string{"A": "x\x00"}},
	} {
		if cmd, err := remoteCommand(c.argv, c.env); err == nil {
			t.Errorf("%q %v: no error, command %q", c.argv, c.env, cmd)
		}
	}
}

func TestSSHExitCode(t *testing.T) {
	if code, err := sshExitCode(nil); code != 0 || err != nil {
		t.Errorf("nil: %d %v", code, err)
	}
	if _, err := sshExitCode(errors.New("boom")); err == nil {
		t.Error("no error for a failed session")
	}
}

func TestInputWindow(t *testing.T) {
	var w inputWindow
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := w.acquire(ctx, 200<<10); err != nil {
		t.Fatal(err)
	}
	if err := w.acquire(ctx, 100<<10); err == nil {
		t.Fatal("the window took more than it holds")
	}
	w.release(150 << 10)
	if err := w.acquire(context.Background(), 100<<10); err != nil {
		t.Fatal(err)
	}
	w.release(1 << 30) // a confused guest
	if err := w.acquire(context.Background(), 1<<20); err != nil {
		t.Fatal("an oversized chunk did not go alone:", err)
	}
}

// sshServer is a minimal SSH server standing in for a guest's sshd: it
// runs exec requests with sh -c on this host, with a pty when asked, and
// reports exit statuses and signals as sshd does.
type sshServer struct {
	t       *testing.T
	cfg     *ssh.ServerConfig
	mu      sync.Mutex
	logins  []string
	command []string
}

func newSSHServer(t *testing.T, hostKey, clientKey *sshkeys.Key) *sshServer {
	srv := &sshServer{t: t}
	srv.cfg = &ssh.ServerConfig{
		PublicKeyCallback: func(c ssh.ConnMetadata, k ssh.PublicKey) (*ssh.Permissions, error) {
			if !bytes.Equal(k.Marshal(), clientKey.Signer.PublicKey().Marshal()) {
				return nil, errors.New("unknown key")
			}
			srv.mu.Lock()
			srv.logins = append(srv.logins, c.User())
			srv.mu.Unlock()
			return nil, nil
		},
	}
	srv.cfg.AddHostKey(hostKey.Signer)
	return srv
}

func (srv *sshServer) serve(conn net.Conn) {
	_, chans, reqs, err := ssh.NewServerConn(conn, srv.cfg)
	if err != nil {
		return
	}
	go ssh.DiscardRequests(reqs)
	for nc := range chans {
		ch, creqs, err := nc.Accept()
		if err != nil {
			return
		}
		go srv.session(ch, creqs)
	}
}

func (srv *sshServer) session(ch ssh.Channel, reqs <-chan *ssh.Request) {
	defer ch.Close()
	var master, slave *os.File
	var term string
	for req := range reqs {
		switch req.Type {
		case "pty-req":
			// string term, uint32 cols, rows, width, height, string modes
			n := binary.BigEndian.Uint32(req.Payload)
			term = string(req.Payload[4 : 4+n])
			p := req.Payload[4+n:]
			cols, rows := binary.BigEndian.Uint32(p), binary.BigEndian.Uint32(p[4:])
			m, sl, err := pty.Open()
			if err != nil {
				req.Reply(false, nil)
				continue
			}
			pty.SetSize(m, uint16(rows), uint16(cols))
			master, slave = m, sl
			req.Reply(true, nil)
		case "window-change":
			cols, rows := binary.BigEndian.Uint32(req.Payload), binary.BigEndian.Uint32(req.Payload[4:])
			if master != nil {
				pty.SetSize(master, uint16(rows), uint16(cols))
			}
		case "exec":
			n := binary.BigEndian.Uint32(req.Payload)
			command := string(req.Payload[4 : 4+n])
			srv.mu.Lock()
			srv.command = append(srv.command, command)
			srv.mu.Unlock()
			req.Reply(true, nil)
			go srv.run(ch, command, master, slave, term)
		default:
			if req.WantReply {
				req.Reply(false, nil)
			}
		}
	}
}

func (srv *sshServer) run(ch ssh.Channel, command string, master, slave *os.File, term string) {
	cmd := exec.Command("sh", "-c", command)
	var copies sync.WaitGroup
	if master != nil {
		cmd.Env = append(os.Environ(), "TERM="+term)
		cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true}
		go io.Copy(master, ch)
		copies.Add(1)
		go func() { defer copies.Done(); io.Copy(ch, master) }()
	} else {
		cmd.Stdin = ch
		cmd.Stdout, cmd.Stderr = ch, ch.Stderr()
	}
	err := cmd.Start()
	if master != nil {
		slave.Close() // the command has its copies
	}
	if err == nil {
		err = cmd.Wait()
	}
	if master != nil {
		master.SetReadDeadline(time.Now().Add(time.Second))
		copies.Wait()
	}
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit) && exit.Sys().(syscall.WaitStatus).Signaled():
		sig := exit.Sys().(syscall.WaitStatus).Signal()
		name := strings.TrimPrefix(unix.SignalName(sig), "SIG")
		ch.SendRequest("exit-signal", false, ssh.Marshal(struct {
			Signal     string
			CoreDumped bool
			Msg, Lang  string
		}{Signal: name}))
	case errors.As(err, &exit):
		ch.SendRequest("exit-status", false, ssh.Marshal(struct{ Status uint32 }{uint32(exit.ExitCode())}))
	case err == nil:
		ch.SendRequest("exit-status", false, ssh.Marshal(struct{ Status uint32 }{0}))
	}
	ch.Close()
}

// noGuest is a VM without a guest agent (cloud-init mode).
type noGuest struct{ hypervisor.Instance }

func (noGuest) Guest() hypervisor.GuestChannel { return nil }

// pairGateway hands every dial to the test's SSH server.
type pairGateway struct {
	Gateway
	srv    *sshServer
	addrs  []string
	refuse int // dials refused first, as by a guest whose sshd is not up yet
}

func (g *pairGateway) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	g.addrs = append(g.addrs, addr)
	if g.refuse > 0 {
		g.refuse--
		// What gVisor's netstack returns for a reset.
		return nil, &net.OpError{Op: "connect", Net: network, Err: errors.New("connection was refused")}
	}
	// A socket pair, not net.Pipe: both SSH ends write their version
	// first, which an unbuffered pipe deadlocks on.
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	conns := make([]net.Conn, 2)
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "ssh")
		conns[i], err = net.FileConn(f)
		f.Close()
		if err != nil {
			return nil, err
		}
	}
	go g.srv.serve(conns[1])
	return conns[0], nil
}

// sshVM puts a cloud-init VM on network lan of s, its SSH server srv.
func sshVM(t *testing.T, s *Supervisor, hostKey *sshkeys.Key) (*pairGateway, *sshServer) {
	t.Helper()
	client, err := sshkeys.Ensure(filepath.Join(filenames.NamespaceState(s.opts.StateRoot, s.opts.Namespace), filenames.SSHClientKey))
	if err != nil {
		t.Fatal(err)
	}
	dir := filenames.VMState(s.opts.StateRoot, s.opts.Namespace, "ci")
	host, err := sshkeys.Ensure(filepath.Join(dir, filenames.SSHHostKey))
	if err != nil {
		t.Fatal(err)
	}
	if hostKey == nil {
		hostKey = host
	}
	srv := newSSHServer(t, hostKey, client)
	gw := &pairGateway{srv: srv}
	s.mu.Lock()
	s.nets["lan"] = &network{gw: gw}
	s.vms["vm.ci"] = &vmRun{s: s, inst: noGuest{}, st: api.VMStatus{State: "ready"},
		spec: api.VMSpec{Address: "vm.ci", Name: "ci", StateDir: dir, NICs: []api.NIC{{Network: "lan", IP: netip.MustParseAddr("10.9.0.7")}}}}
	s.mu.Unlock()
	t.Cleanup(func() {
		s.mu.Lock()
		delete(s.nets, "lan")
		delete(s.vms, "vm.ci")
		s.mu.Unlock()
	})
	return gw, srv
}

// Exec in a VM without a guest agent goes over SSH through the gateway to
// the VM's port 22, as root with the namespace's key, with argv and env
// quoted into one command line; stdin streams, stdout and stderr stay apart,
// and exit codes and signals come back shell-style.
func TestExecOverSSH(t *testing.T) {
	s, _, c := newTestSupervisor(t)
	gw, srv := sshVM(t, s, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	var out, errb testutil.SyncBuffer
	inR, inW := io.Pipe()
	done := make(chan struct{})
	var code int
	var err error
	go func() {
		defer close(done)
		code, err = c.Exec(ctx, "vm.ci", api.ExecSpec{
			Argv:  []string{"sh", "-c", `read a; echo "got $a $MINE"; cat; echo to-stderr >&2; exit 7`},
			Env:   map[string]string{"MINE": "it's mine"},
			Stdin: true,
		}, client.ExecIO{Stdin: inR, Stdout: &out, Stderr: &errb})
	}()
	inW.Write([]byte("one\n"))
	for deadline := time.Now().Add(10 * time.Second); out.String() == "" && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	if out.String() != "got one it's mine\n" {
		t.Fatalf("no answer to the first line before stdin ended: %q", out.String())
	}
	inW.Write([]byte("rest"))
	inW.Close()
	<-done
	if err != nil || code != 7 || out.String() != "got one it's mine\nrest" || errb.String() != "to-stderr\n" {
		t.Fatalf("exit %d, %v; stdout %q, stderr %q", code, err, out.String(), errb.String())
	}
	if len(gw.addrs) != 1 || gw.addrs[0] != "10.9.0.7:22" || len(srv.logins) != 1 || srv.logins[0] != "root" {
		t.Fatalf("dialled %v, logins %v", gw.addrs, srv.logins)
	}

	// A signalled command is 128+n; without Stdin its input is empty.
	code, err = c.Exec(ctx, "vm.ci", api.ExecSpec{Argv: []string{"sh", "-c", "cat; kill -TERM $$"}}, client.ExecIO{})
	if err != nil || code != 128+int(syscall.SIGTERM) {
		t.Fatalf("signalled: exit %d, %v", code, err)
	}

	// With a TTY: the size and TERM reach the command, stderr merges,
	// input and new sizes come through.
	out = testutil.SyncBuffer{}
	resize := make(chan api.WindowSize, 1)
	inR, inW = io.Pipe()
	done = make(chan struct{})
	go func() {
		defer close(done)
		code, err = c.Exec(ctx, "vm.ci", api.ExecSpec{
			Argv: []string{"sh", "-c", `stty size; echo "T=$TERM" >&2; read x; echo "x=$x"; ` +
				`while [ "$(stty size)" = "33 101" ]; do sleep 0.05; done; stty size`},
			Stdin: true,
			TTY:   &api.TTY{Term: "xterm-test", WindowSize: api.WindowSize{Rows: 33, Cols: 101}},
		}, client.ExecIO{Stdin: inR, Stdout: &out, Stderr: &errb, Resize: resize})
	}()
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(out.String(), "T=xterm-test") && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	inW.Write([]byte("hi\n"))
	resize <- api.WindowSize{Rows: 50, Cols: 120}
	<-done
	if want := "33 101\r\nT=xterm-test\r\nhi\r\nx=hi\r\n50 120\r\n"; err != nil || code != 0 || out.String() != want {
		t.Fatalf("tty: exit %d, %v; output %q, want %q", code, err, out.String(), want)
	}
}

// A guest whose host key is not the one stack generated is refused.
func TestExecOverSSHPinsTheHostKey(t *testing.T) {
	s, _, c := newTestSupervisor(t)
	other, err := sshkeys.Ensure(filepath.Join(t.TempDir(), "other"))
	if err != nil {
		t.Fatal(err)
	}
	_, srv := sshVM(t, s, other)
	_, err = c.Exec(context.Background(), "vm.ci", api.ExecSpec{Argv: []string{"true"}}, client.ExecIO{})
	if err == nil || !strings.Contains(err.Error(), "host key mismatch") {
		t.Fatalf("exec against another host key: %v", err)
	}
	if len(srv.command) != 0 {
		t.Fatalf("a command ran: %q", srv.command)
	}
}

// A guest whose sshd is not up yet refuses the connection; exec tries
// again (cloud-init starts sshd once it has written the host key).
func TestExecOverSSHWaitsForSSHD(t *testing.T) {
	s, _, c := newTestSupervisor(t)
	gw, _ := sshVM(t, s, nil)
	gw.refuse = 3
	var out testutil.SyncBuffer
	code, err := c.Exec(context.Background(), "vm.ci", api.ExecSpec{Argv: []string{"echo", "up"}}, client.ExecIO{Stdout: &out})
	if err != nil || code != 0 || out.String() != "up\n" {
		t.Fatalf("exit %d, %v, output %q", code, err, out.String())
	}
	if len(gw.addrs) != 4 {
		t.Errorf("dialled %d times, want 3 refused and 1 accepted", len(gw.addrs))
	}
}
