// Command hostile is a misbehaving guest program for the e2e tests: it is
// built static on the host and streamed into a guest with exec -i.
//
//	hostile udpflood IP N   one UDP datagram to each of N ports of IP, each
//	                        from its own socket: N flows for the gateway
package main

import (
	"fmt"
	"net"
	"os"
	"strconv"
)

func main() {
	if len(os.Args) != 4 || os.Args[1] != "udpflood" {
		fmt.Fprintln(os.Stderr, "usage: hostile udpflood IP N")
		os.Exit(2)
	}
	n, _ := strconv.Atoi(os.Args[3])
	sent := 0
	for i := 0; i < n; i++ {
		c, err := net.Dial("udp4", net.JoinHostPort(os.Args[2], strconv.Itoa(20000+i%40000)))
		if err != nil {
			continue
		}
		if _, err := c.Write([]byte("flood")); err == nil {
			sent++
		}
		c.Close()
	}
	fmt.Println("sent", sent)
}
