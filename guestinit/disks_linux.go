package guestinit

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// FlushBlockCaches drops the cached blocks of every virtio disk under
// sysBlock (BLKFLSBUF). A VM restored from a template has the template
// VM's view of its disks in its page cache: the partition scan at boot
// read their first blocks. Its own disks (config disk, volumes, scratch
// disks) hold other bytes, and must be read afresh.
func FlushBlockCaches(sysBlock string) []error {
	ents, err := os.ReadDir(sysBlock)
	if err != nil {
		return []error{fmt.Errorf("list disks: %w", err)}
	}
	var errs []error
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), "vd") {
			continue
		}
		dev := "/dev/" + e.Name()
		if _, err := os.Stat(filepath.Join(sysBlock, e.Name())); err != nil {
			continue
		}
		f, err := os.OpenFile(dev, os.O_RDONLY, 0)
		if err != nil {
			errs = append(errs, fmt.Errorf("open %s: %w", dev, err))
			continue
		}
		if err := unix.IoctlSetInt(int(f.Fd()), unix.BLKFLSBUF, 0); err != nil {
			errs = append(errs, fmt.Errorf("flush %s: %w", dev, err))
		}
		f.Close()
	}
	return errs
}
