// Package gotest shows stack as a Go test fixture: the quickstart's two VMs
// come up for the test, the test runs commands in both, and t.Cleanup takes
// them down.
package gotest

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stackvm/stack/stacktest"
)

func TestQuickstart(t *testing.T) {
	s := stacktest.Up(t, "../stacks/quickstart.hcl")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	web, client := s.VM("web"), s.VM("client")
	if web.Addresses["lan"] == "" || client.Addresses["lan"] == "" {
		t.Fatalf("addresses: web %v, client %v", web.Addresses, client.Addresses)
	}

	// In web: the page it serves, and its own name.
	if r := web.Exec(ctx, "cat", "/www/index.html"); r.Code != 0 || strings.TrimSpace(r.Stdout) != "hello from web" {
		t.Fatalf("cat in web: %+v", r)
	}
	if r := web.Exec(ctx, "hostname"); strings.TrimSpace(r.Stdout) != "web" {
		t.Fatalf("hostname in web: %+v", r)
	}

	// In client: fetch the page from web by name, as the workload does.
	if r := client.Exec(ctx, "wget", "-q", "-O", "-", "http://web/"); r.Code != 0 || !strings.Contains(r.Stdout, "hello from web") {
		t.Fatalf("wget in client: %+v", r)
	}

	// Exit codes and stderr come back as they are.
	if r := client.Exec(ctx, "sh", "-c", "echo oops >&2; exit 3"); r.Code != 3 || strings.TrimSpace(r.Stderr) != "oops" {
		t.Fatalf("failing command: %+v", r)
	}

	// The workload's own output is on the console.
	client.WaitLog("hello from web", 30*time.Second)
}
