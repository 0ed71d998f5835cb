package guestinit

import (
	"bufio"
	"io"
	"slices"
	"strconv"
	"strings"
)

// tcpListenState is st in /proc/net/tcp for a listening socket.
const tcpListenState = "0A"

// ListeningPorts reads a /proc/net/tcp or /proc/net/tcp6 table and adds the
// local port of every listening socket to ports. Lines it cannot read are
// skipped: the kernel's format is fixed, and a short read only delays the
// answer to the next look.
func ListeningPorts(r io.Reader, ports map[int]bool) {
	sc := bufio.NewScanner(r)
	sc.Scan() // header
	for sc.Scan() {
		// sl local_address rem_address st ...; local_address is
		// ADDR:PORT in hex.
		f := strings.Fields(sc.Text())
		if len(f) < 4 || f[3] != tcpListenState {
			continue
		}
		i := strings.LastIndexByte(f[1], ':')
		if i < 0 {
			continue
		}
		p, err := strconv.ParseUint(f[1][i+1:], 16, 16)
		if err != nil {
			continue
		}
		ports[int(p)] = true
	}
}

// uniquePorts drops duplicates and values that are no TCP port.
func uniquePorts(ports []int) []int {
	var out []int
	for _, p := range ports {
		if p > 0 && p < 65536 && !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	return out
}
