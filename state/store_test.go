package state

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stackvm/stack/internal/netaddr"
)

func TestReadMissingIsEmpty(t *testing.T) {
	s := Open(t.TempDir(), "demo")
	st, err := s.Read()
	if err != nil {
		t.Fatal(err)
	}
	if !st.Empty() || st.Serial != 0 || st.Lineage != "" || st.Namespace != "demo" {
		t.Fatalf("unexpected fresh state: %+v", st)
	}
}

func TestWriteAdvancesSerialKeepsLineage(t *testing.T) {
	root := t.TempDir()
	s := Open(root, "demo")
	st := New("demo")
	st.VMs["vm.web[0]"] = &VM{Address: "vm.web[0]", Name: "web-0", Status: StatusReady,
		NICs: []NIC{{Network: "lan", IP: netip.MustParseAddr("10.0.0.2"), MAC: netaddr.MustParseMAC("52:54:00:00:00:01")}}}
	if err := s.Write(st); err != nil {
		t.Fatal(err)
	}
	lineage := st.Lineage
	if st.Serial != 1 || len(lineage) != 32 {
		t.Fatalf("after first write: serial %d lineage %q", st.Serial, lineage)
	}
	if err := s.Write(st); err != nil {
		t.Fatal(err)
	}
	got, err := s.Read()
	if err != nil {
		t.Fatal(err)
	}
	if got.Serial != 2 || got.Lineage != lineage {
		t.Fatalf("read back serial %d lineage %q, want 2 %q", got.Serial, got.Lineage, lineage)
	}
	if got.VMs["vm.web[0]"].NICs[0].IP != netip.MustParseAddr("10.0.0.2") {
		t.Fatalf("NIC not round-tripped: %+v", got.VMs["vm.web[0]"].NICs)
	}
	fi, err := os.Stat(s.Path())
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("state file mode %v, want 0600", fi.Mode().Perm())
	}
	di, _ := os.Stat(s.Dir())
	if di.Mode().Perm() != 0o700 {
		t.Errorf("state dir mode %v, want 0700", di.Mode().Perm())
	}
	leftovers, _ := filepath.Glob(filepath.Join(s.Dir(), ".*tmp*"))
	if len(leftovers) != 0 {
		t.Errorf("temp files left behind: %v", leftovers)
	}
}

func TestCorruptAndNewerStatesAreRefusedAndUntouched(t *testing.T) {
	cases := map[string]struct{ content, want string }{
		"garbage":      {"{not json", "corrupt"},
		"truncated":    {`{"format_version": 1, "serial": 3, "lineage": "ab`, "corrupt"},
		"no version":   {`{"serial": 3}`, "no format_version"},
		"no lineage":   {`{"format_version": 1, "serial": 3}`, "no lineage"},
		"unknown keys": {`{"format_version": 1, "lineage": "x", "bogus": 1}`, "corrupt"},
		"newer":        {`{"format_version": 99, "lineage": "x"}`, "newer"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			s := Open(t.TempDir(), "demo")
			if err := os.MkdirAll(s.Dir(), 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(s.Path(), []byte(c.content), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := s.Read()
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Read() error = %v, want it to mention %q", err, c.want)
			}
			after, _ := os.ReadFile(s.Path())
			if string(after) != c.content {
				t.Fatalf("state file changed by a failed read")
			}
		})
	}
}

func TestLockSerializesAndTimesOut(t *testing.T) {
	root := t.TempDir()
	first, err := Open(root, "demo").Lock(context.Background(), time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	waited := false
	_, err = Open(root, "demo").Lock(context.Background(), 150*time.Millisecond, func() { waited = true })
	if !errors.Is(err, ErrLockTimeout) {
		t.Fatalf("second lock: err = %v, want ErrLockTimeout", err)
	}
	if !waited {
		t.Fatal("waiting callback not called while the lock was busy")
	}
	// Another namespace is independent.
	other, err := Open(root, "other").Lock(context.Background(), 50*time.Millisecond, nil)
	if err != nil {
		t.Fatalf("lock of another namespace: %v", err)
	}
	other.Unlock()

	got := make(chan error, 1)
	go func() {
		l, err := Open(root, "demo").Lock(context.Background(), 5*time.Second, nil)
		if err == nil {
			l.Unlock()
		}
		got <- err
	}()
	time.Sleep(100 * time.Millisecond)
	first.Unlock()
	if err := <-got; err != nil {
		t.Fatalf("waiter did not get the lock after release: %v", err)
	}
}

func TestList(t *testing.T) {
	root := t.TempDir()
	for _, ns := range []string{"b", "a"} {
		if err := Open(root, ns).Write(New(ns)); err != nil {
			t.Fatal(err)
		}
	}
	os.MkdirAll(filepath.Join(root, "empty-dir"), 0o700)
	got, err := List(root)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(got, ",") != "a,b" {
		t.Fatalf("List = %v, want [a b]", got)
	}
}
