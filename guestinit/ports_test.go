package guestinit

import (
	"maps"
	"slices"
	"strings"
	"testing"
)

// Lines as Linux 6.1 writes them: httpd on 0.0.0.0:80 and [::]:8080
// listening, an established connection from port 80, a socket bound to
// port 22 in TIME_WAIT, and a truncated line.
const procNetTCP = `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1234 1 0000000000000000 100 0 0 10 0
   1: 0300280A:0050 0200280A:A1B2 01 00000000:00000000 00:00000000 00000000     0        0 1235 1 0000000000000000 20 4 30 10 -1
   2: 0300280A:0016 0200280A:C000 06 00000000:00000000 03:00000F9F 00000000     0        0 0 3 0000000000000000
   3: 00000000:
`

const procNetTCP6 = `  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2345 1 0000000000000000 100 0 0 10 0
`

func TestListeningPorts(t *testing.T) {
	got := map[int]bool{}
	ListeningPorts(strings.NewReader(procNetTCP), got)
	ListeningPorts(strings.NewReader(procNetTCP6), got)
	if ports := slices.Sorted(maps.Keys(got)); !slices.Equal(ports, []int{80, 8080}) {
		t.Fatalf("listening ports %v, want [80 8080]", ports)
	}
}

func TestUniquePorts(t *testing.T) {
	if got := uniquePorts([]int{80, 0, 80, 70000, 443, -1}); !slices.Equal(got, []int{80, 443}) {
		t.Fatalf("uniquePorts = %v", got)
	}
}
