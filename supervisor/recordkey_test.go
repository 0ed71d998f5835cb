package supervisor

import (
	"bytes"
	"os"
	"testing"

	"github.com/stackvm/stack/internal/filenames"
)

func keyedSupervisor(t *testing.T) *Supervisor {
	t.Helper()
	s := &Supervisor{opts: Options{RuntimeRoot: t.TempDir(), Namespace: "ns"}}
	if err := os.MkdirAll(filenames.NamespaceRuntime(s.opts.RuntimeRoot, "ns"), 0o700); err != nil {
		t.Fatal(err)
	}
	return s
}

// A sealed guest configuration holds no clear text, opens with the same
// namespace's key (also in a later supervisor, which reads it from the
// runtime directory), and not with another key.
func TestSealedGuestConfig(t *testing.T) {
	cfg := []byte(`{"env":{"PGPASSWORD":"hunter2"}}`)
	s := keyedSupervisor(t)
	sealed, err := s.sealConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(sealed, []byte("hunter2")) {
		t.Fatal("the sealed config holds the clear text")
	}
	later := &Supervisor{opts: s.opts}
	if got, err := later.openConfig(sealed); err != nil || !bytes.Equal(got, cfg) {
		t.Fatalf("open with the namespace's key: %q, %v", got, err)
	}
	if _, err := keyedSupervisor(t).openConfig(sealed); err == nil {
		t.Fatal("opened with another key")
	}
}
