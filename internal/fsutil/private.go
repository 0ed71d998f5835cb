package fsutil

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"syscall"

	"github.com/stackvm/stack/internal/filenames"
)

// ErrNotPrivate is wrapped by the errors of CheckPrivate.
var ErrNotPrivate = errors.New("not private")

// MkdirPrivate creates dirs in order (each with its missing parents) mode
// filenames.DirMode, then checks each with CheckPrivate. It is called every
// time a runtime or state directory is used, not only when it is created:
// a directory that another user made beforehand (or opened up since) would
// let that user replace the sockets and files stack puts in it.
func MkdirPrivate(dirs ...string) error {
	for _, d := range dirs {
		if err := os.MkdirAll(d, filenames.DirMode); err != nil {
			return fmt.Errorf("create directory: %w", err)
		}
		if err := CheckPrivate(d); err != nil {
			return err
		}
	}
	return nil
}

// CheckPrivate checks that dir is a directory (not a symbolic link to
// one), owned by this process's user, with no group or other permission
// bits. A dir that does not exist is fs.ErrNotExist, unwrapped by os.
func CheckPrivate(dir string) error {
	fi, err := os.Lstat(dir)
	if err != nil {
		return err
	}
	var problem string
	st, _ := fi.Sys().(*syscall.Stat_t)
	switch {
	case !fi.IsDir():
		problem = fmt.Sprintf("it is a %s, not a directory", typeName(fi.Mode()))
	case st != nil && int(st.Uid) != os.Getuid():
		problem = fmt.Sprintf("it is owned by uid %d, not by this user (uid %d)", st.Uid, os.Getuid())
	case fi.Mode().Perm()&0o077 != 0:
		problem = fmt.Sprintf("its mode is %04o, which lets other users in", fi.Mode().Perm())
	default:
		return nil
	}
	return fmt.Errorf("directory %s is %w: %s. Another user could replace the sockets and files stack keeps there; if you did not make it so, find out who did, then remove it (or `chmod 700` it, when it is yours) and run the command again", dir, ErrNotPrivate, problem)
}

func typeName(m fs.FileMode) string {
	switch {
	case m&fs.ModeSymlink != 0:
		return "symbolic link"
	case m&fs.ModeSocket != 0:
		return "socket"
	default:
		return "file"
	}
}
