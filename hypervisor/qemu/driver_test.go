package qemu

import (
	"slices"
	"testing"
)

// TestCleanupsUnwind: a failed start undoes in reverse order, once; a
// successful one undoes nothing.
func TestCleanupsUnwind(t *testing.T) {
	var ran []int
	var undo cleanups
	for i := range 3 {
		undo.push(func() { ran = append(ran, i) })
	}
	undo.unwind()
	undo.unwind()
	if want := []int{2, 1, 0}; !slices.Equal(ran, want) {
		t.Errorf("unwound %v, want %v", ran, want)
	}

	ran = nil
	undo.push(func() { ran = append(ran, 0) })
	undo.disarm()
	undo.unwind()
	if len(ran) != 0 {
		t.Errorf("a disarmed stack ran %v", ran)
	}
}
