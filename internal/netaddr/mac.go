// Package netaddr holds the MAC address type that crosses stack's package
// boundaries (stack files, state, the supervisor's protocol, the guest's
// configuration, the VMM's arguments, the switch and the gateway's leases)
// as a value rather than a string to be parsed again at every step.
package netaddr

import (
	"fmt"
	"net"
)

// MAC is a 48-bit Ethernet address. It is comparable (a map key), its zero
// value means "none", and it reads and writes as "52:54:00:12:34:56" in
// JSON, YAML and text.
type MAC [6]byte

// ParseMAC reads a 48-bit MAC address in any form net.ParseMAC takes
// (colons, dashes or dots; either case).
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

const hexDigits = "0123456789abcdef"

// String is the canonical lower-case form, aa:bb:cc:dd:ee:ff. It does not
// allocate beyond its result: the switch logs and keys by it.
func (m MAC) String() string {
	var b [17]byte
	for i, v := range m {
		if i > 0 {
			b[3*i-1] = ':'
		}
		b[3*i], b[3*i+1] = hexDigits[v>>4], hexDigits[v&0xf]
	}
	return string(b[:])
}

// HardwareAddr is m as the net package takes it.
func (m MAC) HardwareAddr() net.HardwareAddr { return net.HardwareAddr(m[:]) }

// IsZero reports whether m is unset.
func (m MAC) IsZero() bool { return m == MAC{} }

// IsMulticast reports whether m is a group address (broadcast included).
func (m MAC) IsMulticast() bool { return m[0]&1 == 1 }

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

// MustParseMAC is ParseMAC for addresses known to be good (constants,
// tests); it panics on a bad one.
func MustParseMAC(s string) MAC {
	m, err := ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return m
}
