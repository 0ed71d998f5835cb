package app

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/charmbracelet/lipgloss"
	"github.com/muesli/termenv"

	"github.com/stackvm/stack"
	"github.com/stackvm/stack/internal/termsafe"
	"github.com/stackvm/stack/planner"
)

// progress renders up/down events: a live per-resource block on a TTY (like
// compose), one line per event when plain, one JSON object per line with
// --progress json.
type progress struct {
	mode string
	out  io.Writer

	mu     sync.Mutex
	order  []string
	latest map[string]stack.Event
	drawn  int
	start  time.Time
	style  map[stack.Phase]lipgloss.Style
}

func newProgress(s Streams, mode string) (*progress, error) {
	switch mode {
	case "auto":
		mode = "plain"
		if colorEnabled(s.Err) {
			mode = "tty"
		}
	case "tty", "plain", "json":
	default:
		return nil, fmt.Errorf("--progress must be auto, tty, plain or json, not %q", mode)
	}
	p := &progress{mode: mode, out: s.Err, latest: map[string]stack.Event{}, start: time.Now()}
	if mode == "json" {
		p.out = s.Out
	}
	if mode == "tty" {
		var r *lipgloss.Renderer
		if f, ok := s.Err.(*os.File); ok {
			r = lipgloss.NewRenderer(f, termenv.WithProfile(termenv.ANSI))
		} else {
			r = lipgloss.NewRenderer(s.Err)
		}
		p.style = map[stack.Phase]lipgloss.Style{
			"ready": r.NewStyle().Foreground(lipgloss.Color("2")), "done": r.NewStyle().Foreground(lipgloss.Color("2")),
			"failed": r.NewStyle().Foreground(lipgloss.Color("1")), "delete": r.NewStyle().Foreground(lipgloss.Color("3")),
			"": r.NewStyle().Foreground(lipgloss.Color("6")),
		}
	}
	return p, nil
}

func (p *progress) event(ev stack.Event) {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch p.mode {
	case "json":
		json.NewEncoder(p.out).Encode(ev)
	case "plain":
		fmt.Fprintf(p.out, "%s %-16s %-10s %s\n", ev.Time.Format("15:04:05.000"), ev.Address, ev.Phase, termsafe.String(ev.Message))
	case "tty":
		// Warnings are notes above the block, so that a VM's next event
		// does not hide one about it.
		if ev.Phase == stack.PhaseWarning {
			msg := ev.Message
			if ev.Address != "" {
				msg = ev.Address + ": " + msg
			}
			p.warn(msg)
			return
		}
		if ev.Address == "" {
			return
		}
		if _, ok := p.latest[ev.Address]; !ok {
			p.order = append(p.order, ev.Address)
			sort.Slice(p.order, func(i, j int) bool { return planner.CompareAddress(p.order[i], p.order[j]) < 0 })
		}
		p.latest[ev.Address] = ev
		p.redraw()
	}
}

// warn prints a note above the live block: the block is cleared, the note
// written, and the block drawn again below it.
func (p *progress) warn(msg string) {
	var b strings.Builder
	if p.drawn > 0 {
		fmt.Fprintf(&b, "\x1b[%dA\x1b[J", p.drawn)
	}
	fmt.Fprintf(&b, "%s %s\n", p.style["delete"].Render("!"), termsafe.String(msg))
	io.WriteString(p.out, b.String())
	p.drawn = 0
	if len(p.order) > 0 {
		p.redraw()
	}
}

// redraw moves the cursor back over the block drawn last and draws it anew.
func (p *progress) redraw() {
	var b strings.Builder
	if p.drawn > 0 {
		fmt.Fprintf(&b, "\x1b[%dA", p.drawn)
	}
	for _, addr := range p.order {
		ev := p.latest[addr]
		st, ok := p.style[ev.Phase]
		if !ok {
			st = p.style[""]
		}
		mark := "…"
		switch ev.Phase {
		case "ready", "done":
			mark = "✔"
		case "failed":
			mark = "✘"
		}
		fmt.Fprintf(&b, "\x1b[2K %s %-18s %s %s\n", st.Render(mark), addr, st.Render(fmt.Sprintf("%-9s", ev.Phase)), termsafe.String(ev.Message))
	}
	p.drawn = len(p.order)
	io.WriteString(p.out, b.String())
}

func (p *progress) finish() {}

// say prints a closing message (never in JSON mode, whose stdout is events).
func (p *progress) say(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.mode == "json" {
		return
	}
	fmt.Fprintf(p.out, format+" (%s)\n", append(args, roundElapsed(time.Since(p.start)))...)
}

// roundElapsed keeps three significant digits or so: "4.21s", "350ms",
// "3ms" (a plain 10 ms rounding printed a quick no-op as "0s").
func roundElapsed(d time.Duration) time.Duration {
	switch {
	case d >= time.Second:
		return d.Round(10 * time.Millisecond)
	case d >= 10*time.Millisecond:
		return d.Round(time.Millisecond)
	}
	return d.Round(100 * time.Microsecond)
}
