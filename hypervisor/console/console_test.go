package console

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestLogRotation(t *testing.T) {
	p := filepath.Join(t.TempDir(), "console.log")
	l, err := OpenLog(p, 100)
	if err != nil {
		t.Fatal(err)
	}
	var want bytes.Buffer
	for i := range 30 {
		line := fmt.Sprintf("line %02d\r\n", i) // 9 bytes
		want.WriteString(line)
		if _, err := l.Write([]byte(line)); err != nil {
			t.Fatal(err)
		}
	}
	l.Close()
	cur, _ := os.ReadFile(p)
	old, err := os.ReadFile(RotatedPath(p))
	if err != nil {
		t.Fatalf("no rotated file: %v", err)
	}
	if len(cur) > 100 || len(old) > 100 {
		t.Errorf("sizes %d and %d exceed the cap 100", len(cur), len(old))
	}
	// Nothing is lost within the last cap's worth, and the two files are
	// the tail of everything written, in order.
	joined := append(old, cur...)
	if !bytes.HasSuffix(want.Bytes(), joined) {
		t.Errorf("rotated+current is not the tail of the output:\n%q", joined)
	}
	if len(joined) < 100 {
		t.Errorf("only %d bytes kept, want at least the cap", len(joined))
	}
	for _, f := range []string{p, RotatedPath(p)} {
		st, _ := os.Stat(f)
		if st.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %v, want 0600", f, st.Mode().Perm())
		}
	}

	lines, err := Tail(p, 15)
	if err != nil {
		t.Fatal(err)
	}
	var wantLines []string
	for i := 15; i < 30; i++ {
		wantLines = append(wantLines, fmt.Sprintf("line %02d", i))
	}
	if !reflect.DeepEqual(lines, wantLines) {
		t.Errorf("Tail = %q\nwant %q", lines, wantLines)
	}

	// Reopening appends to the existing file and keeps counting its size.
	l, err = OpenLog(p, 100)
	if err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(p)
	l.Write(bytes.Repeat([]byte("x"), 100-len(before)+1))
	l.Close()
	nowOld, _ := os.ReadFile(RotatedPath(p))
	if !bytes.Equal(nowOld, before) {
		t.Errorf("reopened log did not rotate at the cap")
	}
}

func TestTail(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "console.log")
	if _, err := Tail(p, 5); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing log: err = %v", err)
	}
	os.WriteFile(RotatedPath(p), []byte("a\nb\npart"), 0o600)
	os.WriteFile(p, []byte("ial\nc\r\nd"), 0o600)
	cases := []struct {
		n    int
		want []string
	}{
		{0, nil},
		{1, []string{"d"}},
		{3, []string{"partial", "c", "d"}},
		{10, []string{"a", "b", "partial", "c", "d"}},
	}
	for _, c := range cases {
		got, err := Tail(p, c.n)
		if err != nil || !reflect.DeepEqual(got, c.want) {
			t.Errorf("Tail(%d) = %q, %v; want %q", c.n, got, err, c.want)
		}
	}
	os.Remove(RotatedPath(p))
	os.WriteFile(p, nil, 0o600)
	if got, err := Tail(p, 3); err != nil || len(got) != 0 {
		t.Errorf("empty log: %q, %v", got, err)
	}
}

func FuzzTail(f *testing.F) {
	f.Add([]byte("a\nb"), []byte("c\r\n"), 2)
	f.Add([]byte{}, []byte("\n\n\n"), 1)
	f.Fuzz(func(t *testing.T, old, cur []byte, n int) {
		dir := t.TempDir()
		p := filepath.Join(dir, "l")
		os.WriteFile(p, cur, 0o600)
		os.WriteFile(RotatedPath(p), old, 0o600)
		lines, err := Tail(p, n%100)
		if err != nil {
			t.Fatal(err)
		}
		if n%100 > 0 && len(lines) > n%100 {
			t.Fatalf("%d lines for n=%d", len(lines), n%100)
		}
	})
}

// fakeVMM is QEMU's side of the serial chardev socket.
type fakeVMM struct {
	ln   net.Listener
	conn chan net.Conn
}

func newFakeVMM(t *testing.T, path string) *fakeVMM {
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeVMM{ln: ln, conn: make(chan net.Conn, 1)}
	go func() {
		c, err := ln.Accept()
		if err == nil {
			f.conn <- c
		}
		close(f.conn)
	}()
	t.Cleanup(func() { ln.Close() })
	return f
}

func TestRelay(t *testing.T) {
	dir := t.TempDir()
	vmmPath := filepath.Join(dir, "console-vmm.sock")
	sockPath := filepath.Join(dir, "console.sock")
	logPath := filepath.Join(dir, "console.log")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// The relay starts before the VMM has made its socket and retries.
	type started struct {
		r   *Relay
		err error
	}
	ch := make(chan started, 1)
	go func() {
		r, err := Start(ctx, Options{VMMSocket: vmmPath, Socket: sockPath, LogPath: logPath, MaxBytes: 1 << 16})
		ch <- started{r, err}
	}()
	time.Sleep(20 * time.Millisecond)
	vmm := newFakeVMM(t, vmmPath)
	st := <-ch
	if st.err != nil {
		t.Fatal(st.err)
	}
	r := st.r
	defer r.Close()
	vconn := <-vmm.conn
	defer vconn.Close()

	fi, err := os.Stat(sockPath)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("console socket: %v, mode %v; want 0600", err, fi.Mode().Perm())
	}

	// Output before any client is connected still reaches the log.
	io.WriteString(vconn, "early boot\r\n")
	waitFor(t, func() bool { b, _ := os.ReadFile(logPath); return len(b) == 12 })

	var clients []net.Conn
	for range 2 {
		c, err := net.Dial("unix", sockPath)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		clients = append(clients, c)
	}
	waitFor(t, func() bool { return r.clientCount() == 2 })
	io.WriteString(vconn, "login: ")
	for i, c := range clients {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 7)
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "login: " {
			t.Fatalf("client %d got %q, %v", i, buf, err)
		}
	}
	// Input from either client goes to the guest.
	io.WriteString(clients[1], "root\n")
	vconn.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(vconn).ReadString('\n')
	if err != nil || line != "root\n" {
		t.Fatalf("vmm got %q, %v", line, err)
	}

	// A client leaving does not disturb the others.
	clients[0].Close()
	waitFor(t, func() bool { return r.clientCount() == 1 })
	io.WriteString(vconn, "again\r\n")
	buf := make([]byte, 7)
	if _, err := io.ReadFull(clients[1], buf); err != nil || string(buf) != "again\r\n" {
		t.Fatalf("remaining client got %q, %v", buf, err)
	}

	// The VMM going away stops the relay, disconnects clients and removes
	// the client socket.
	vconn.Close()
	select {
	case <-r.Done():
	case <-ctx.Done():
		t.Fatal("relay did not stop when the vmm closed")
	}
	r.Close()
	clients[1].SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := clients[1].Read(buf); err == nil {
		t.Error("client still connected after the relay stopped")
	}
	if _, err := os.Stat(sockPath); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("console socket left behind: %v", err)
	}
	got, _ := os.ReadFile(logPath)
	if want := "early boot\r\nlogin: again\r\n"; string(got) != want {
		t.Errorf("log = %q, want %q", got, want)
	}
	lines, _ := Tail(logPath, 1)
	if !reflect.DeepEqual(lines, []string{"login: again"}) {
		t.Errorf("tail = %q", lines)
	}
}

func TestRelayGivesUp(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := Start(ctx, Options{VMMSocket: filepath.Join(dir, "nope.sock"), Socket: filepath.Join(dir, "c.sock"), LogPath: filepath.Join(dir, "l")})
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "nope.sock") {
		t.Fatalf("err = %v", err)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for i := 0; i < 500; i++ {
		if cond() {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("condition never met")
}
