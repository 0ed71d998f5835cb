package guestimage

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/u-root/u-root/pkg/cpio"

	"github.com/stackvm/stack/internal/filenames"
)

// Applets are the busybox applets linked into /bin of the guest image. A
// fixed list (rather than `busybox --list`) keeps the image's contents
// independent of the host's busybox build; a test checks every one exists
// in the busybox that goes in.
var Applets = []string{
	"[", "ash", "awk", "basename", "cat", "chmod", "chown", "cp",
	"cut", "date", "dd", "df", "dirname", "dmesg", "du", "echo", "env",
	"expr", "false", "find", "free", "grep", "gunzip", "gzip", "halt",
	"head", "hexdump", "hostname", "httpd", "id", "ifconfig", "insmod",
	"ip", "kill", "killall", "less", "ln", "ls", "lsmod", "md5sum", "mkdir",
	"mknod", "mktemp", "more", "mount", "mv", "nc", "netstat", "nslookup",
	"od", "ping", "ping6", "poweroff", "printf", "ps", "pwd", "readlink",
	"realpath", "reboot", "rm", "rmdir", "route", "sed", "seq", "sh",
	"sha256sum", "sleep", "sort", "stat", "sync", "tail", "tar", "tee",
	"telnet", "test", "timeout", "top", "touch", "tr", "traceroute", "true", "tty", "stty", "clear",
	"udhcpc", "umount", "uname", "uniq", "uptime", "vi", "watch", "wc",
	"wget", "which", "xargs", "yes", "zcat",
}

// imageDirs are created in every image; /usr/bin, /sbin and /usr/sbin are
// symlinks to /bin so that scripts with #!/usr/bin/env find their tools.
var imageDirs = []string{"bin", "dev", "etc", "etc/stack", "lib", "lib/modules", "mnt", "proc", "root", "run", "sys", "tmp", "usr", "var"}

// buildInputs is everything that goes into an initramfs.
type buildInputs struct {
	Init    []byte
	Busybox []byte
	Release string // kernel release, names /lib/modules/<release>
	ModDir  string // host directory holding the release's module tree
	Modules []ModuleEntry
}

// buildRecords lays out the initramfs: parents before children, every
// parent directory explicit (the kernel's unpacker does not create them),
// all owned by root with mtime 0 so that equal inputs give equal archives.
func buildRecords(in buildInputs) ([]cpio.Record, error) {
	var recs []cpio.Record
	dirs := map[string]bool{}
	addDir := func(d string) {
		var walk func(string)
		walk = func(d string) {
			if d == "." || d == "/" || d == "" || dirs[d] {
				return
			}
			walk(path.Dir(d))
			dirs[d] = true
			mode := uint64(0o755)
			if d == "tmp" {
				mode = 0o1777
			}
			recs = append(recs, cpio.Directory(d, mode))
		}
		walk(d)
	}
	for _, d := range imageDirs {
		addDir(d)
	}
	recs = append(recs,
		cpio.Symlink("sbin", "bin"),
		cpio.Symlink("usr/bin", "../bin"),
		cpio.Symlink("usr/sbin", "../bin"),
		cpio.Symlink("var/tmp", "../tmp"),
		cpio.Symlink("var/run", "../run"),
		// The kernel opens /dev/console for PID 1's stdio before anything
		// can mount devtmpfs, so the node must be in the archive.
		cpio.CharDev("dev/console", 0o600, 5, 1),
		cpio.CharDev("dev/null", 0o666, 1, 3),
		cpio.StaticRecord(in.Init, cpio.Info{Name: "init", Mode: cpio.S_IFREG | 0o755}),
		cpio.StaticRecord(in.Busybox, cpio.Info{Name: "bin/busybox", Mode: cpio.S_IFREG | 0o755}),
		cpio.StaticFile("etc/passwd", "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n", 0o644),
		cpio.StaticFile("etc/group", "root:x:0:\nnogroup:x:65534:\n", 0o644),
	)
	for _, a := range Applets {
		recs = append(recs, cpio.Symlink("bin/"+a, "busybox"))
	}
	modRoot := path.Join("lib/modules", in.Release)
	var list strings.Builder
	list.WriteString("# group path: load a group's lines in order, skipping loaded paths\n")
	added := map[string]bool{}
	for _, e := range in.Modules {
		rel := filepath.ToSlash(e.Path)
		name := path.Join(modRoot, rel)
		list.WriteString(e.Group + " /" + name + "\n")
		if added[rel] {
			continue
		}
		added[rel] = true
		if strings.HasSuffix(rel, ".xz") || strings.HasSuffix(rel, ".zst") || strings.HasSuffix(rel, ".gz") {
			return nil, fmt.Errorf("add module %s: compressed modules are not supported", rel)
		}
		data, err := os.ReadFile(filepath.Join(in.ModDir, filepath.FromSlash(rel)))
		if err != nil {
			return nil, fmt.Errorf("add module: %w", err)
		}
		addDir(path.Dir(name))
		recs = append(recs, cpio.StaticRecord(StripModuleSignature(data), cpio.Info{Name: name, Mode: cpio.S_IFREG | 0o644}))
	}
	recs = append(recs, cpio.StaticFile(strings.TrimPrefix(filenames.GuestModuleList, "/"), list.String(), 0o644))
	return recs, nil
}

// writeArchive writes newc records and the trailer, compressed with gzip
// at level (-1: a plain cpio, which the kernel also accepts).
func writeArchive(w io.Writer, recs []cpio.Record, level int) error {
	var out io.Writer = w
	var gz *gzip.Writer
	if level != -1 {
		var err error
		gz, err = gzip.NewWriterLevel(w, level)
		if err != nil {
			return fmt.Errorf("create gzip writer: %w", err)
		}
		out = gz
	}
	cw := cpio.Newc.Writer(out)
	for i, r := range recs {
		// Distinct inode numbers and nlink 1: the kernel's unpacker treats
		// entries sharing an inode with nlink > 1 as hard links.
		r.Ino = uint64(i + 1)
		r.NLink = 1
		if err := cw.WriteRecord(r); err != nil {
			return fmt.Errorf("write cpio record %s: %w", r.Name, err)
		}
	}
	if err := cpio.WriteTrailer(cw); err != nil {
		return fmt.Errorf("write cpio trailer: %w", err)
	}
	if gz != nil {
		if err := gz.Close(); err != nil {
			return fmt.Errorf("finish gzip: %w", err)
		}
	}
	return nil
}

// Listing reads an initramfs (gzip-compressed or plain newc) and returns one
// line per entry: type, mode, name, and for symlinks the target, sorted by
// name. Regular file sizes are left out so that the listing does not change
// with every rebuild of the init binary.
func Listing(r io.Reader) ([]string, error) {
	br := &peekReader{r: r}
	head, err := br.peek(2)
	if err != nil {
		return nil, fmt.Errorf("read initramfs: %w", err)
	}
	var data []byte
	if bytes.Equal(head, []byte{0x1f, 0x8b}) {
		gz, err := gzip.NewReader(br)
		if err != nil {
			return nil, fmt.Errorf("read initramfs gzip: %w", err)
		}
		data, err = io.ReadAll(gz)
		if err != nil {
			return nil, fmt.Errorf("read initramfs gzip: %w", err)
		}
	} else if data, err = io.ReadAll(br); err != nil {
		return nil, fmt.Errorf("read initramfs: %w", err)
	}
	rr := cpio.Newc.Reader(bytes.NewReader(data))
	var lines []string
	err = cpio.ForEachRecord(rr, func(rec cpio.Record) error {
		m := rec.Mode
		var kind string
		extra := ""
		switch m & cpio.S_IFMT {
		case cpio.S_IFDIR:
			kind = "d"
		case cpio.S_IFREG:
			kind = "f"
		case cpio.S_IFLNK:
			kind = "l"
			t, err := io.ReadAll(io.NewSectionReader(rec.ReaderAt, 0, int64(rec.FileSize)))
			if err != nil {
				return fmt.Errorf("read symlink %s: %w", rec.Name, err)
			}
			extra = " -> " + string(t)
		case cpio.S_IFCHR:
			kind = "c"
			extra = fmt.Sprintf(" %d:%d", rec.Rmajor, rec.Rminor)
		default:
			kind = "?"
		}
		lines = append(lines, fmt.Sprintf("%s %04o %s%s", kind, m&0o7777, rec.Name, extra))
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read initramfs cpio: %w", err)
	}
	sort.Slice(lines, func(i, j int) bool { return lines[i][7:] < lines[j][7:] })
	return lines, nil
}

type peekReader struct {
	r   io.Reader
	buf []byte
}

func (p *peekReader) peek(n int) ([]byte, error) {
	for len(p.buf) < n {
		b := make([]byte, n-len(p.buf))
		k, err := p.r.Read(b)
		p.buf = append(p.buf, b[:k]...)
		if err != nil {
			return p.buf, err
		}
	}
	return p.buf[:n], nil
}

func (p *peekReader) Read(b []byte) (int, error) {
	if len(p.buf) > 0 {
		n := copy(b, p.buf)
		p.buf = p.buf[n:]
		return n, nil
	}
	return p.r.Read(b)
}

// moduleSigMagic ends a signed kernel module; before it come the signature
// and a 12-byte struct module_signature whose last field is the big-endian
// signature length (see the kernel's include/linux/module_signature.h).
const moduleSigMagic = "~Module signature appended~\n"

// StripModuleSignature removes a module's appended signature. The kernel
// verifies signatures with RSA on every load, which under TCG costs tens of
// milliseconds per module; unsigned modules load without the check (Debian
// kernels do not enforce signatures unless booted with module.sig_enforce
// or under Secure Boot lockdown, neither of which applies to our guests).
// The modules' integrity comes from the .deb, whose hash is checked against
// the apt index. Unsigned or malformed input is returned unchanged.
func StripModuleSignature(ko []byte) []byte {
	if !bytes.HasSuffix(ko, []byte(moduleSigMagic)) {
		return ko
	}
	body := ko[:len(ko)-len(moduleSigMagic)]
	if len(body) < 12 {
		return ko
	}
	sig := body[len(body)-12:]
	signerLen, keyIDLen := int(sig[3]), int(sig[4])
	sigLen := int(binary.BigEndian.Uint32(sig[8:12]))
	n := len(body) - 12 - sigLen - signerLen - keyIDLen
	if sigLen < 0 || n < 0 {
		return ko
	}
	return ko[:n]
}
