package state

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"strings"
)

// Sensitive attribute values (those derived from a `sensitive` variable)
// are never written in clear into state.json or a saved plan. What is kept
// is what detecting a change needs: a salted hash of the value,
//
//	{"(sensitive)": "hmac-sha256:<salt hex>:<HMAC-SHA256(salt, value) hex>"}
//
// where value is the attribute's compact JSON and salt is 16 random bytes
// drawn for each sealing. The key cannot be a valid attribute key (env
// names and the model's JSON fields have no parentheses), so a sealed value
// is never mistaken for a clear one. docs/stackfile.md gives the threat
// model: a hash defeats reading the value off the file, not guessing a weak
// one offline.
const (
	sealedKey    = "(sensitive)"
	sealedScheme = "hmac-sha256"
	saltSize     = 16
)

// Seal returns the sealed form of a clear attribute value.
func Seal(value json.RawMessage) json.RawMessage {
	var salt [saltSize]byte
	if _, err := rand.Read(salt[:]); err != nil {
		panic("read random salt: " + err.Error()) // crypto/rand never fails on Linux
	}
	return sealWith(salt[:], value)
}

func sealWith(salt []byte, value json.RawMessage) json.RawMessage {
	text := sealedScheme + ":" + hex.EncodeToString(salt) + ":" + hex.EncodeToString(mac(salt, value))
	raw, _ := json.Marshal(map[string]string{sealedKey: text}) // a map of strings always encodes
	return raw
}

func mac(salt []byte, value json.RawMessage) []byte {
	h := hmac.New(sha256.New, salt)
	h.Write(canonical(value))
	return h.Sum(nil)
}

// canonical is value compacted: the same value sealed from json.Marshal or
// from an indented file hashes the same.
func canonical(value json.RawMessage) []byte {
	var b bytes.Buffer
	if json.Compact(&b, value) != nil {
		return value
	}
	return b.Bytes()
}

// parseSealed returns the salt and MAC of a sealed value; ok is false for a
// clear one.
func parseSealed(raw json.RawMessage) (salt, sum []byte, ok bool) {
	if !bytes.Contains(raw, []byte(sealedKey)) {
		return nil, nil, false
	}
	var m map[string]string
	if json.Unmarshal(raw, &m) != nil || len(m) != 1 {
		return nil, nil, false
	}
	scheme, rest, _ := strings.Cut(m[sealedKey], ":")
	saltHex, sumHex, _ := strings.Cut(rest, ":")
	salt, err1 := hex.DecodeString(saltHex)
	sum, err2 := hex.DecodeString(sumHex)
	if scheme != sealedScheme || err1 != nil || err2 != nil || len(salt) == 0 || len(sum) != sha256.Size {
		return nil, nil, false
	}
	return salt, sum, true
}

// IsSealed reports whether raw is a sealed value.
func IsSealed(raw json.RawMessage) bool {
	_, _, ok := parseSealed(raw)
	return ok
}

// SealedMatches reports whether sealed is the sealed form of the clear
// value. It is false when sealed is not sealed.
func SealedMatches(sealed, value json.RawMessage) bool {
	salt, sum, ok := parseSealed(sealed)
	if !ok || value == nil {
		return false
	}
	return hmac.Equal(sum, mac(salt, value))
}
