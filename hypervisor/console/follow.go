package console

import (
	"context"
	"io"
	"os"
	"strings"
	"time"
)

// FollowInterval is how often Follow looks for new output.
const FollowInterval = 200 * time.Millisecond

// Follow calls onLine for every complete line of the log at logPath from
// byte offset from (negative: its current end), carriage returns dropped,
// until onLine returns false or ctx ends. A
// rotation (the file shrinks) is followed into the new file; a log that does
// not exist yet is waited for. It is what `stack logs -f` and the wait for
// cloud-init's ready line share.
func Follow(ctx context.Context, logPath string, from int64, onLine func(string) bool) error {
	off := from
	var partial string
	t := time.NewTicker(FollowInterval)
	defer t.Stop()
	for {
		if f, err := os.Open(logPath); err == nil {
			if fi, err := f.Stat(); err == nil {
				switch {
				case off < 0:
					off = fi.Size()
				case fi.Size() < off:
					off, partial = 0, "" // rotated: read the new file from its start
				}
			}
			f.Seek(off, io.SeekStart)
			data, _ := io.ReadAll(f)
			f.Close()
			off += int64(len(data))
			text := partial + string(data)
			cut := strings.LastIndexByte(text, '\n') + 1
			complete := text[:cut]
			partial = text[cut:] // a line still being written
			if complete != "" {
				for _, line := range strings.Split(strings.TrimSuffix(complete, "\n"), "\n") {
					if !onLine(strings.TrimRight(line, "\r")) {
						return nil
					}
				}
			}
		} else if off < 0 {
			off = 0 // created later: all of it is new
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}
