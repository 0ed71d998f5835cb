package stack

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"
)

// Copying runs tar in the guest through Exec (the guest agent, or SSH for
// cloud-init VMs): the built-in image's busybox and distribution images
// both have one. The host side reads and writes the tar stream itself, so
// that modes are kept and a hostile guest's archive cannot write outside
// the destination.

// guestStat prints what a guest path is: d (directory), f (something
// else), n (nothing), then p when its parent directory exists.
const guestStat = `if [ -d "$1" ]; then echo d; elif [ -e "$1" ]; then echo f; else echo n; fi; ` +
	`if [ -d "$(dirname "$1")" ]; then echo p; fi`

// guestTarOut writes a tar of $1 (named by its base name) to stdout.
const guestTarOut = `if [ ! -e "$1" ] && [ ! -L "$1" ]; then echo "no such file or directory: $1" >&2; exit 2; fi; ` +
	`cd "$(dirname "$1")" && exec tar -c -f - "$(basename "$1")"`

// CopyError is a copy that failed for a reason the user must fix (no such
// file, not a directory, permission), worded as docker cp words it.
type CopyError struct{ Msg string }

func (e *CopyError) Error() string { return e.Msg }

// CopyOptions tune CopyTo and CopyFrom.
type CopyOptions struct {
	// Progress, when set, is called as the archive streams: done bytes of
	// total (the files' sizes; -1 when unknown, copying out).
	Progress func(done, total int64)
}

// counter counts the bytes through it for CopyOptions.Progress.
type counter struct {
	r     io.Reader
	w     io.Writer
	done  int64
	total int64
	f     func(done, total int64)
}

func (c *counter) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.add(n)
	return n, err
}

func (c *counter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.add(n)
	return n, err
}

func (c *counter) add(n int) {
	c.done += int64(n)
	if c.f != nil {
		c.f(c.done, c.total)
	}
}

// treeSize is the bytes of the regular files under root.
func treeSize(root string) int64 {
	var n int64
	filepath.WalkDir(root, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}

func copyErr(format string, args ...any) error { return &CopyError{Msg: fmt.Sprintf(format, args...)} }

// CopyTo copies src, a file or directory of the host, to dst in the VM
// named vm, as `docker cp` does: into dst when it is a directory, else as
// dst (whose parent must exist). Modes are kept; the guest's root owns
// what is copied.
func (p *Project) CopyTo(ctx context.Context, src, vm, dst string, opts CopyOptions) error {
	fi, err := os.Lstat(src)
	if err != nil {
		return copyErr("no such file or directory: %s", src)
	}
	// dst/ names dst, which must be a directory.
	kind, parent, err := p.statGuest(ctx, vm, path.Clean(dst))
	if err != nil {
		return err
	}
	dir, name := dst, filepath.Base(filepath.Clean(src))
	switch {
	case kind == "d":
	case strings.HasSuffix(dst, "/") && kind == "f":
		return copyErr("not a directory: %s:%s", vm, dst)
	case strings.HasSuffix(dst, "/"):
		return copyErr("no such directory: %s:%s", vm, dst)
	case kind == "f" && fi.IsDir():
		return copyErr("cannot copy a directory to a file: %s:%s", vm, dst)
	case kind == "n" && !parent:
		return copyErr("no such directory: %s:%s", vm, path.Dir(dst))
	default:
		dir, name = path.Dir(dst), path.Base(dst)
	}
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(writeTar(pw, src, name)) }()
	var stderr bytes.Buffer
	in := &counter{r: pr, total: treeSize(src), f: opts.Progress}
	code, err := p.Exec(ctx, vm, []string{"tar", "-x", "-p", "-f", "-", "-C", dir}, ExecOptions{Stdin: in, Stdout: io.Discard, Stderr: &stderr})
	pr.CloseWithError(errors.New("copy ended"))
	if err != nil {
		return fmt.Errorf("copy to %s: %w", vm, err)
	}
	if code != 0 {
		return copyErr("copy to %s:%s: %s", vm, dst, guestMessage(&stderr, code))
	}
	return nil
}

// statGuest reports what path is in the VM (d, f or n) and whether its
// parent directory exists.
func (p *Project) statGuest(ctx context.Context, vm, guestPath string) (kind string, parent bool, err error) {
	var out, stderr bytes.Buffer
	code, err := p.Exec(ctx, vm, []string{"sh", "-c", guestStat, "sh", guestPath}, ExecOptions{Stdout: &out, Stderr: &stderr})
	if err != nil {
		return "", false, fmt.Errorf("copy: %w", err)
	}
	lines := strings.Fields(out.String())
	if code != 0 || len(lines) == 0 {
		return "", false, fmt.Errorf("copy: look at %s:%s: %s", vm, guestPath, guestMessage(&stderr, code))
	}
	return lines[0], len(lines) > 1 && lines[1] == "p", nil
}

// CopyFrom copies src, a file or directory in the VM named vm, to dst on
// the host, as `docker cp` does: into dst when it is a directory, else as
// dst (whose parent must exist). Modes are kept.
func (p *Project) CopyFrom(ctx context.Context, vm, src, dst string, opts CopyOptions) error {
	target := dst
	if fi, err := os.Stat(dst); err == nil && fi.IsDir() {
		target = filepath.Join(dst, path.Base(path.Clean(src)))
	} else if err == nil && strings.HasSuffix(dst, "/") {
		return copyErr("not a directory: %s", dst)
	} else if err != nil {
		if strings.HasSuffix(dst, string(os.PathSeparator)) {
			return copyErr("no such directory: %s", dst)
		}
		if fi, err := os.Stat(filepath.Dir(dst)); err != nil || !fi.IsDir() {
			return copyErr("no such directory: %s", filepath.Dir(dst))
		}
	}
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		err := extractTar(pr, target)
		pr.CloseWithError(err)
		io.Copy(io.Discard, pr) // let the guest's tar finish
		done <- err
	}()
	var stderr bytes.Buffer
	out := &counter{w: pw, total: -1, f: opts.Progress}
	code, err := p.Exec(ctx, vm, []string{"sh", "-c", guestTarOut, "sh", src}, ExecOptions{Stdout: out, Stderr: &stderr})
	pw.Close()
	xerr := <-done
	switch {
	case err != nil:
		return fmt.Errorf("copy from %s: %w", vm, err)
	case code != 0:
		return copyErr("copy from %s:%s: %s", vm, src, guestMessage(&stderr, code))
	case xerr != nil:
		return xerr
	}
	return nil
}

// guestMessage is the guest command's complaint, or its exit code.
func guestMessage(stderr *bytes.Buffer, code int) string {
	if msg := strings.TrimSpace(stderr.String()); msg != "" {
		return msg
	}
	return fmt.Sprintf("exit status %d", code)
}

// writeTar writes src (a file, directory or symbolic link) as a tar whose
// top entry is named name, owned by root as docker cp's copies are.
func writeTar(w io.Writer, src, name string) error {
	tw := tar.NewWriter(w)
	root := filepath.Clean(src)
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		link := ""
		if fi.Mode()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(p); err != nil {
				return err
			}
		}
		h, err := tar.FileInfoHeader(fi, link)
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		h.Name = path.Join(name, filepath.ToSlash(rel))
		if fi.IsDir() {
			h.Name += "/"
		}
		h.Uid, h.Gid, h.Uname, h.Gname = 0, 0, "", ""
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if fi.Mode().IsRegular() {
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			_, err = io.Copy(tw, f)
			f.Close()
			return err
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("read %s: %w", src, err)
	}
	return tw.Close()
}

// extractTar writes the tar r, made by the guest, as target: its first
// path element is renamed to target's base name. The guest is not trusted:
// an entry outside its top entry, or under a link it made, is refused, and
// only files, directories and symbolic links are written.
func extractTar(r io.Reader, target string) error {
	tr := tar.NewReader(r)
	links := map[string]bool{} // symbolic links this copy made
	top := ""
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read the copy: %w", err)
		}
		name := path.Clean(h.Name)
		first, rest, _ := strings.Cut(name, "/")
		if top == "" {
			top = first
		}
		if first != top || name == ".." || strings.HasPrefix(name, "../") || path.IsAbs(name) || strings.Contains(rest, "..") {
			return fmt.Errorf("read the copy: unexpected entry %q", h.Name)
		}
		out := target
		if rest != "" {
			out = filepath.Join(target, filepath.FromSlash(rest))
		}
		for dir := filepath.Dir(out); len(dir) >= len(target); dir = filepath.Dir(dir) {
			if links[dir] {
				return fmt.Errorf("read the copy: entry %q is under a link", h.Name)
			}
			if dir == target {
				break
			}
		}
		mode := fs.FileMode(h.Mode) & fs.ModePerm
		switch h.Typeflag {
		case tar.TypeDir:
			if fi, err := os.Lstat(out); err == nil && !fi.IsDir() {
				return copyErr("cannot copy a directory to a file: %s", out)
			}
			if err := os.Mkdir(out, mode|0o700); err != nil && !errors.Is(err, fs.ErrExist) {
				return copyWriteErr(out, err)
			}
			defer os.Chmod(out, mode) // once its contents are written
		case tar.TypeReg:
			f, err := os.OpenFile(out, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|syscall.O_NOFOLLOW, mode)
			if err != nil {
				return copyWriteErr(out, err)
			}
			_, err = io.Copy(f, tr)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return copyWriteErr(out, err)
			}
			if err := os.Chmod(out, mode); err != nil {
				return copyWriteErr(out, err)
			}
		case tar.TypeSymlink:
			os.Remove(out)
			if err := os.Symlink(h.Linkname, out); err != nil {
				return copyWriteErr(out, err)
			}
			links[out] = true
		}
	}
}

func copyWriteErr(p string, err error) error {
	switch {
	case errors.Is(err, fs.ErrPermission):
		return copyErr("permission denied: %s", p)
	case errors.Is(err, fs.ErrNotExist):
		return copyErr("no such file or directory: %s", p)
	}
	return fmt.Errorf("write %s: %w", p, err)
}
