package supervisor

import (
	"fmt"
	"time"
	"unicode/utf8"

	"github.com/stackvm/stack/guestproto"
)

// What a guest can make the supervisor keep, log or broadcast is bounded
// (see docs/security.md): a guest's code is not trusted.

// maxGuestString caps each string a guest reports (bring-up errors, exec
// errors): they are stored in the VM's record, shown by ps and up, and
// sent to watchers.
const maxGuestString = 1024

// guestString is s cut to maxGuestString bytes (on a character boundary),
// saying how much was cut.
func guestString(s string) string {
	if len(s) <= maxGuestString {
		return s
	}
	cut := maxGuestString
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return fmt.Sprintf("%s… (%d more bytes cut)", s[:cut], len(s)-cut)
}

// boundMessage cuts the strings of a guest's message.
func boundMessage(m *guestproto.Message) {
	m.Error, m.Text = guestString(m.Error), guestString(m.Text)
	if m.Status != nil {
		m.Status.Error = guestString(m.Status.Error)
	}
}

// Guest reports other than exec traffic (hello, ready, listening, exit,
// error) come at most guestMsgRate a second per VM after a burst of
// guestMsgBurst; the rest are dropped. An honest guest sends a handful per
// boot. Exec traffic is bounded by its sessions' queues instead.
const (
	guestMsgRate  = 50
	guestMsgBurst = 200
	// dropLogEvery spaces the log lines that count dropped reports.
	dropLogEvery = 10 * time.Second
)

// guestLimiter is a token bucket of the reports of one VM incarnation's
// guest (one goroutine's).
type guestLimiter struct {
	tokens   float64
	last     time.Time
	dropped  int
	lastNote time.Time
}

// allow takes a token; when none is left it counts the report as dropped,
// and returns the count to log once per dropLogEvery (else 0).
func (l *guestLimiter) allow(now time.Time) (ok bool, note int) {
	if l.last.IsZero() {
		l.tokens = guestMsgBurst
	} else {
		l.tokens = min(guestMsgBurst, l.tokens+now.Sub(l.last).Seconds()*guestMsgRate)
	}
	l.last = now
	if l.tokens >= 1 {
		l.tokens--
		return true, 0
	}
	l.dropped++
	if now.Sub(l.lastNote) < dropLogEvery {
		return false, 0
	}
	note, l.dropped, l.lastNote = l.dropped, 0, now
	return false, note
}

// execTraffic reports whether a guest message belongs to an exec session.
func execTraffic(typ string) bool {
	switch typ {
	case guestproto.TypeExecOutput, guestproto.TypeExecExit, guestproto.TypeExecInputAck:
		return true
	}
	return false
}
