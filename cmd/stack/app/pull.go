package app

import (
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/stackvm/stack"
	"github.com/stackvm/stack/image"
)

func newPullCmd(_ *globals, s Streams) *cobra.Command {
	var progressMode string
	cmd := &cobra.Command{
		Use:   "pull IMAGE...",
		Short: "Fetch OCI images and convert them to VM root file systems ahead of up",
		Long: `Fetch OCI images and convert them to VM root file systems ahead of up.

IMAGE is NAME[:TAG|@DIGEST] from a registry (Docker Hub and library/ by
default; credentials from the Docker config), oci:PATH[:TAG] for an OCI image
layout, or docker-archive:PATH for a docker save tarball. Each image is
converted once, cached by the digest of its config; for each, a line
"IMAGE ID ROOTFS" goes to standard output.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			tty := false
			switch progressMode {
			case "auto":
				f, ok := s.Err.(*os.File)
				tty = ok && term.IsTerminal(int(f.Fd()))
			case "tty":
				tty = true
			case "plain":
			default:
				return fmt.Errorf("--progress must be auto, tty or plain, not %q", progressMode)
			}
			for _, ref := range args {
				bar := &pullBar{out: s.Err, tty: tty, start: time.Now()}
				img, err := stack.Pull(cmd.Context(), ref, stack.PullOptions{Progress: bar.update})
				bar.clear()
				if err != nil {
					return err
				}
				fmt.Fprintf(s.Err, "Pulled %s: %s, %d layers, %s root file system (%s)\n",
					img.Ref, img.ID, len(img.Layers), megabytes(img.Size), roundElapsed(time.Since(bar.start)))
				fmt.Fprintf(s.Out, "%s %s %s\n", img.Ref, img.ID, img.RootFS)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&progressMode, "progress", "auto", "progress output: auto, tty (a bar) or plain (a line per step)")
	return cmd
}

// pullBar renders a pull's progress: one line redrawn in place on a
// terminal (at most ten times a second), else a line per step.
type pullBar struct {
	out   io.Writer
	tty   bool
	start time.Time
	last  image.Progress
	drawn time.Time
	shown bool
}

func (b *pullBar) update(p image.Progress) {
	prev := b.last
	b.last = p
	if !b.tty {
		// A finished layer gets its line when the next step starts.
		if prev.Phase == image.PhaseLayer && (p.Phase != prev.Phase || p.Layer != prev.Layer) {
			fmt.Fprintf(b.out, "%s: layer %d/%d read (%s)\n", p.Ref, prev.Layer, prev.Layers, megabytes(prev.LayerBytes))
		}
		if p.Phase != prev.Phase && p.Phase != image.PhaseLayer && p.Phase != image.PhaseDone {
			fmt.Fprintf(b.out, "%s: %s\n", p.Ref, phaseText(p))
		}
		return
	}
	if p.Phase == prev.Phase && p.Layer == prev.Layer && time.Since(b.drawn) < 100*time.Millisecond {
		return
	}
	b.drawn = time.Now()
	b.shown = true
	fmt.Fprintf(b.out, "\r\x1b[2K%s %s", p.Ref, phaseText(p))
}

// clear removes the bar before the closing line.
func (b *pullBar) clear() {
	if b.tty && b.shown {
		io.WriteString(b.out, "\r\x1b[2K")
	}
}

func phaseText(p image.Progress) string {
	switch p.Phase {
	case image.PhaseResolve:
		return "resolving"
	case image.PhaseCached:
		return "already converted"
	case image.PhaseFS:
		return "writing the root file system"
	case image.PhaseLayer:
		s := fmt.Sprintf("layer %d/%d", p.Layer, p.Layers)
		if p.Size > 0 {
			const width = 30
			n := min(width, int(p.Bytes*width/p.Size))
			s += " [" + strings.Repeat("=", n) + strings.Repeat(" ", width-n) + "] " + megabytes(p.Bytes) + "/" + megabytes(p.Size)
		} else {
			s += " " + megabytes(p.Bytes)
		}
		return s
	}
	return string(p.Phase)
}

func megabytes(n int64) string { return fmt.Sprintf("%.1f MB", float64(n)/1e6) }
