package supervisor

import (
	"context"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/stackvm/stack/supervisor/api"
)

// A cloud-init VM whose guest reports module failures (the report line,
// as cloudinit's waiter writes it, status.json on one line) is ready with
// a warning per module; with strict, or with a critical failure, it fails;
// a report that cannot be read leaves the failed line to fail it.
func TestCloudInitReport(t *testing.T) {
	read := func(name string) string {
		b, err := os.ReadFile("../cloudinit/outcome/testdata/" + name + ".json")
		if err != nil {
			t.Fatal(err)
		}
		return strings.ReplaceAll(string(b), "\n", "")
	}
	locale, bootcmd := read("locale-22.4"), read("bootcmd-22.4")
	for _, c := range []struct {
		name    string
		strict  bool
		report  string
		state   api.VMState
		message string // in the warning (ready) or the reason (failed)
	}{
		{"module", false, locale, api.StateReady, "cloud-init module locale failed: "},
		{"strict", true, locale, api.StateFailed, "cloud-init module locale failed: "},
		{"critical", false, bootcmd, api.StateFailed, "cloud-init module bootcmd failed: "},
		{"unreadable", false, locale[:100], api.StateFailed, "its report could not be read"},
	} {
		t.Run(c.name, func(t *testing.T) {
			s, _, cl := newTestSupervisor(t)
			ctx := context.Background()
			events, _ := cl.Watch(ctx)
			spec := startSpec(t, s, "no")
			spec.Ready = api.Ready{ConsoleLine: "STACK-READY id-1", ConsoleFailLine: "STACK-FAILED id-1",
				ConsoleReportLine: "STACK-REPORT id-1", CloudInitStrict: c.strict, Timeout: api.Duration(10 * time.Second)}
			if err := os.MkdirAll(spec.StateDir, 0o700); err != nil {
				t.Fatal(err)
			}
			if _, err := cl.StartVM(ctx, spec); err != nil {
				t.Fatal(err)
			}
			f, err := os.OpenFile(consoleLogPath(&spec), os.O_APPEND|os.O_WRONLY|os.O_CREATE, 0o600)
			if err != nil {
				t.Fatal(err)
			}
			f.WriteString("stack: cloud-init: status: error\r\n\r\nSTACK-REPORT id-1 " + c.report + "\r\n\r\nSTACK-FAILED id-1\r\n")
			f.Close()
			phase := api.PhaseReady
			if c.state == api.StateFailed {
				phase = api.PhaseFailed
			}
			ev := waitPhase(t, events, phase)
			st, err := cl.Status(ctx)
			if err != nil || len(st) != 1 {
				t.Fatalf("status: %v, %v", st, err)
			}
			if st[0].State != c.state {
				t.Fatalf("state %s (%s), want %s", st[0].State, st[0].Reason, c.state)
			}
			if c.state == api.StateReady {
				if len(st[0].Warnings) != 1 || !strings.HasPrefix(st[0].Warnings[0], c.message) || !reflect.DeepEqual(ev.Warnings, st[0].Warnings) ||
					!strings.Contains(ev.Message, "failed modules: locale") {
					t.Fatalf("warnings %q, event %q", st[0].Warnings, ev.Message)
				}
				return
			}
			if !strings.Contains(st[0].Reason, c.message) || len(st[0].Warnings) != 0 {
				t.Fatalf("reason %q, warnings %q", st[0].Reason, st[0].Warnings)
			}
		})
	}
}
