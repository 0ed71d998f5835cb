// Package netaddr holds the MAC address type that crosses stack's package
// boundaries (stack files, state, the supervisor's protocol, the guest's
// configuration, the gateway's leases) as a value rather than a string to
// be parsed again at every step.
package netaddr

import (
	"fmt"
	"net"
)

// MAC is a 48-bit Ethernet address. It is comparable (a map key), and it
// reads and writes as "52:54:00:12:34:56" in JSON and text.
type MAC [6]byte

// ParseMAC reads a 48-bit MAC address in any form net.ParseMAC takes.
func ParseMAC(s string) (MAC, error) {
	hw, err := net.ParseMAC(s)
	if err != nil {
		return MAC{}, err
	}
	if len(hw) != 6 {
		return MAC{}, fmt.Errorf("parse mac %q: not a 48-bit address", s)
	}
	return MAC(hw), nil
}

// String is the canonical lower-case form, aa:bb:cc:dd:ee:ff.
func (m MAC) String() string { return net.HardwareAddr(m[:]).String() }

// HardwareAddr is m as the net package takes it.
func (m MAC) HardwareAddr() net.HardwareAddr { return net.HardwareAddr(m[:]) }

// IsZero reports whether m is unset.
func (m MAC) IsZero() bool { return m == MAC{} }

// MarshalText implements encoding.TextMarshaler.
func (m MAC) MarshalText() ([]byte, error) { return []byte(m.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (m *MAC) UnmarshalText(b []byte) error {
	v, err := ParseMAC(string(b))
	if err != nil {
		return err
	}
	*m = v
	return nil
}
