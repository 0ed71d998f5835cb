package netswitch

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/stackvm/stack/internal/netaddr"
)

// MAC is an Ethernet address as it appears on the wire.
type MAC = netaddr.MAC

const (
	// EthHeaderLen is the length of an untagged Ethernet header.
	EthHeaderLen = 14
	// vlanTagLen is the extra length an 802.1Q tag adds.
	vlanTagLen = 4
	// DefaultMTU is the IP MTU of a network unless configured.
	DefaultMTU = 1500
	// streamPrefixLen is the length prefix of QEMU's stream transport.
	streamPrefixLen = 4
)

// Reasons a frame is refused. They are counted as drops on the receiving
// port; they are errors only so that tests and fuzzing can name them.
var (
	ErrRunt      = errors.New("frame shorter than an ethernet header")
	ErrOversize  = errors.New("frame longer than the MTU allows")
	ErrBadSource = errors.New("frame has a multicast source address")
)

// maxFrameLen is the longest frame accepted for an IP MTU: header, payload
// and one optional 802.1Q tag (no FCS: none of the transports carry it).
func maxFrameLen(mtu int) int { return mtu + EthHeaderLen + vlanTagLen }

// checkFrame validates one frame for a switch whose longest frame is max.
// It looks only at lengths and the source address, which is all a learning
// switch relies on.
func checkFrame(f []byte, max int) error {
	if len(f) < EthHeaderLen {
		return ErrRunt
	}
	if len(f) > max {
		return ErrOversize
	}
	// A tagged frame may use the 4 extra bytes; an untagged one may not.
	if len(f) > max-vlanTagLen && binary.BigEndian.Uint16(f[12:14]) != 0x8100 {
		return ErrOversize
	}
	if f[6]&1 == 1 {
		return ErrBadSource
	}
	return nil
}

func dstMAC(f []byte) (m MAC) { copy(m[:], f[0:6]); return }
func srcMAC(f []byte) (m MAC) { copy(m[:], f[6:12]); return }

// ErrBadLength is returned by the stream decoder for a length prefix that
// cannot be a frame; the stream cannot be resynchronised after one.
var ErrBadLength = errors.New("bad stream length prefix")

// streamDecoder splits QEMU's stream transport (4-byte big-endian length,
// then the frame) out of a byte buffer without copying.
type streamDecoder struct {
	max int // longest acceptable frame
}

// next returns the first complete frame in buf and how many bytes it used.
// With an incomplete frame it returns (nil, 0, nil): read more. A length of
// zero or above max is ErrBadLength.
func (d streamDecoder) next(buf []byte) (frame []byte, used int, err error) {
	if len(buf) < streamPrefixLen {
		return nil, 0, nil
	}
	n := binary.BigEndian.Uint32(buf)
	if n == 0 || n > uint32(d.max) {
		return nil, 0, fmt.Errorf("decode stream frame of length %d: %w", n, ErrBadLength)
	}
	end := streamPrefixLen + int(n)
	if len(buf) < end {
		return nil, 0, nil
	}
	return buf[streamPrefixLen:end], end, nil
}

// appendStreamFrame appends f with its length prefix to dst.
func appendStreamFrame(dst, f []byte) []byte {
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(f)))
	return append(dst, f...)
}
