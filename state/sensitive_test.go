package state

import (
	"encoding/json"
	"strings"
	"testing"
)

// A sealed value holds no clear text, is salted (sealing twice differs),
// matches the same value however it is indented, and nothing else.
func TestSeal(t *testing.T) {
	v := json.RawMessage(`{"PGPASSWORD":"hunter2"}`)
	a, b := Seal(v), Seal(v)
	if strings.Contains(string(a), "hunter2") || string(a) == string(b) {
		t.Fatalf("Seal: %s, %s", a, b)
	}
	if !IsSealed(a) || IsSealed(v) || IsSealed(json.RawMessage(`{"(sensitive)":"hmac-sha256:zz:00"}`)) {
		t.Error("IsSealed")
	}
	if !SealedMatches(a, json.RawMessage("{\n  \"PGPASSWORD\": \"hunter2\"\n}")) {
		t.Error("the same value, indented, does not match")
	}
	if SealedMatches(a, json.RawMessage(`{"PGPASSWORD":"hunter3"}`)) || SealedMatches(v, v) || SealedMatches(a, nil) {
		t.Error("a different value, or a clear one, matches")
	}
}
