package supervisor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"

	"github.com/stackvm/stack/internal/filenames"
	"github.com/stackvm/stack/internal/sshkeys"
	"github.com/stackvm/stack/supervisor/api"
)

// SSHUser is the account exec logs in as in cloud-init VMs: the seed
// installs the namespace's exec key for it (see cloudinit.Input.ExecKey).
const SSHUser = "root"

// sshHandshakeTimeout bounds the TCP connect and SSH handshake (a guest
// under TCG is slow, but not that slow).
const sshHandshakeTimeout = 30 * time.Second

// execSSH runs an exec in a cloud-init VM over SSH, through the gateway of
// the VM's first network: stack's namespace key logs in as root, and the
// guest's host key must be the one stack put in its seed.
func (s *Supervisor) execSSH(ctx context.Context, v *vmRun, spec *api.ExecSpec, out *execOut, inputs <-chan api.ExecInput, hangup <-chan struct{}) {
	fail := func(format string, args ...any) { out.exit(-1, fmt.Sprintf(format, args...)) }
	command, err := remoteCommand(spec.Argv, spec.Env)
	if err != nil {
		fail("exec over SSH: %v", err)
		return
	}
	client, err := s.dialSSH(ctx, v)
	if err != nil {
		fail("%v", err)
		return
	}
	defer client.Close()
	sess, err := client.NewSession()
	if err != nil {
		fail("open an SSH session: %v", err)
		return
	}
	defer sess.Close()
	if t := spec.TTY; t != nil {
		term := t.Term
		if term == "" {
			term = "xterm"
		}
		modes := ssh.TerminalModes{ssh.ECHO: 1, ssh.TTY_OP_ISPEED: 38400, ssh.TTY_OP_OSPEED: 38400}
		if err := sess.RequestPty(term, int(t.Rows), int(t.Cols), modes); err != nil {
			fail("request a terminal over SSH: %v", err)
			return
		}
	}
	sess.Stdout = streamWriter{out, "stdout"}
	sess.Stderr = streamWriter{out, "stderr"}
	var stdin io.WriteCloser
	if spec.Stdin {
		if stdin, err = sess.StdinPipe(); err != nil {
			fail("%v", err)
			return
		}
	}
	if err := sess.Start(command); err != nil {
		fail("start the command over SSH: %v", err)
		return
	}
	go eachInput(ctx, inputs, func(in api.ExecInput) bool {
		switch {
		case len(in.Stdin) > 0 && stdin != nil:
			// Blocks while the SSH channel's window is full, which holds
			// the client back.
			if _, err := stdin.Write(in.Stdin); err != nil {
				stdin = nil
			}
		case in.EOF && stdin != nil:
			stdin.Close()
			stdin = nil
		case in.Size != nil && spec.TTY != nil:
			sess.WindowChange(int(in.Size.Rows), int(in.Size.Cols))
		}
		return true
	})
	waited := make(chan error, 1)
	go func() { waited <- sess.Wait() }()
	select {
	case err = <-waited:
	case <-hangup:
		return // the deferred closes end the session: sshd hangs up its terminal
	case <-ctx.Done():
		fail("supervisor shutting down")
		return
	}
	code, err := sshExitCode(err)
	if err != nil {
		fail("%v", err)
		return
	}
	out.exit(code, "")
}

// dialSSH connects to the VM's SSH server through the gateway of its first
// network and logs in.
func (s *Supervisor) dialSSH(ctx context.Context, v *vmRun) (*ssh.Client, error) {
	keyPath := filepath.Join(filenames.NamespaceState(s.opts.StateRoot, s.opts.Namespace), filenames.SSHClientKey)
	key, err := sshkeys.Load(keyPath)
	if err == nil {
		var host *sshkeys.Key
		host, err = sshkeys.Load(filepath.Join(v.spec.StateDir, filenames.SSHHostKey))
		if err == nil {
			return s.dialSSHWith(ctx, v, key, host)
		}
	}
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("no SSH keys from stack for this VM (%v): it was created by a stack without exec for cloud-init VMs; re-create it (stack down, then stack up)", err)
	}
	return nil, err
}

func (s *Supervisor) dialSSHWith(ctx context.Context, v *vmRun, key, host *sshkeys.Key) (*ssh.Client, error) {
	if len(v.spec.NICs) == 0 {
		return nil, errors.New("exec in a cloud-init VM goes over SSH and needs a network")
	}
	nic := v.spec.NICs[0]
	n := s.network(nic.Network)
	var gw Gateway
	if n != nil {
		gw = n.gateway()
	}
	if gw == nil {
		return nil, fmt.Errorf("network %q has no gateway to reach the VM's SSH server through", nic.Network)
	}
	addr := net.JoinHostPort(nic.IP.String(), "22")
	dctx, cancel := context.WithTimeout(ctx, sshHandshakeTimeout)
	defer cancel()
	conn, err := gw.DialContext(dctx, "tcp", addr)
	// A VM whose readiness is a tcp or http probe can be ready before
	// cloud-init has written the host key from the seed and started sshd:
	// a refused connection is tried again until the handshake timeout.
	for err != nil && strings.Contains(err.Error(), "refused") {
		select {
		case <-dctx.Done():
		case <-time.After(250 * time.Millisecond):
			conn, err = gw.DialContext(dctx, "tcp", addr)
			continue
		}
		break
	}
	if err != nil {
		return nil, fmt.Errorf("connect to the VM's SSH server at %s: %w (the image needs openssh-server; see docs/cloud-init.md)", addr, err)
	}
	conn.SetDeadline(time.Now().Add(sshHandshakeTimeout))
	stop := context.AfterFunc(dctx, func() { conn.SetDeadline(time.Now()) })
	defer stop()
	cfg := &ssh.ClientConfig{
		User:            SSHUser,
		Auth:            []ssh.AuthMethod{ssh.PublicKeys(key.Signer)},
		HostKeyCallback: ssh.FixedHostKey(host.Signer.PublicKey()),
		// Only the key stack generated: no other algorithm is offered, so
		// the guest cannot present a key of another type.
		HostKeyAlgorithms: []string{host.Signer.PublicKey().Type()},
	}
	c, chans, reqs, err := ssh.NewClientConn(conn, addr, cfg)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("log in over SSH at %s as %s: %w", addr, SSHUser, err)
	}
	conn.SetDeadline(time.Time{})
	return ssh.NewClient(c, chans, reqs), nil
}

// sshExitCode turns Session.Wait's result into a shell-style exit code.
func sshExitCode(err error) (int, error) {
	var exit *ssh.ExitError
	switch {
	case err == nil:
		return 0, nil
	case errors.As(err, &exit):
		if sig := exit.Signal(); sig != "" {
			// RFC 4254 names signals without "SIG" (OpenSSH sends
			// "name@openssh.com" for others).
			name, _, _ := strings.Cut(sig, "@")
			if n := unix.SignalNum("SIG" + name); n != 0 {
				return 128 + int(n), nil
			}
			return 255, nil
		}
		return exit.ExitStatus(), nil
	}
	var missing *ssh.ExitMissingError
	if errors.As(err, &missing) {
		return -1, errors.New("the SSH session ended without an exit status (was the connection lost?)")
	}
	return -1, err
}

// envName is a name a POSIX shell takes in an assignment.
var envName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// remoteCommand is argv, with env, as the one command line SSH carries:
// the remote user's login shell parses it, so every word is quoted with
// shellQuote and env becomes assignments in front of the command (sshd
// passes only the variables its AcceptEnv lists, Debian's LANG and LC_*).
// A quoted first word is a command name, never an assignment.
func remoteCommand(argv []string, env map[string]string) (string, error) {
	if len(argv) == 0 {
		return "", errors.New("no command")
	}
	var words []string
	names := make([]string, 0, len(env))
	for k := range env {
		names = append(names, k)
	}
	slices.Sort(names)
	for _, k := range names {
		if !envName.MatchString(k) {
			return "", fmt.Errorf("environment variable %q: a shell cannot set it (want letters, digits and _)", k)
		}
		if strings.IndexByte(env[k], 0) >= 0 {
			return "", fmt.Errorf("environment variable %s: the value holds a NUL byte", k)
		}
		words = append(words, k+"="+shellQuote(env[k]))
	}
	for i, a := range argv {
		if strings.IndexByte(a, 0) >= 0 {
			return "", fmt.Errorf("argument %d holds a NUL byte", i)
		}
		words = append(words, shellQuote(a))
	}
	return strings.Join(words, " "), nil
}

// shellQuote quotes s as one word for a POSIX shell: inside single quotes
// every byte stands for itself, and a single quote is written as '\”
// (close, escaped quote, reopen). Every word is quoted, even when it would
// not need it, so that no word is ever read as an assignment, a tilde, a
// glob or a reserved word.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
