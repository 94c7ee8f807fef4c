package tunnelclient

import (
	"fmt"
	"slices"
	"testing"
)

// TestRepeatCounter logs a repeated event at counts that are powers of
// two, per key, and forgets its keys when too many come.
func TestRepeatCounter(t *testing.T) {
	var r repeatCounter
	var logged []int64
	for range 20 {
		if n, log := r.hit("a"); log {
			logged = append(logged, n)
		}
	}
	if want := []int64{1, 2, 4, 8, 16}; !slices.Equal(logged, want) {
		t.Errorf("logged at %v, want %v", logged, want)
	}
	if n, log := r.hit("b"); n != 1 || !log {
		t.Errorf("a new key: %d, %v; want its first occurrence logged", n, log)
	}
	for i := range repeatKeys {
		r.hit(fmt.Sprint("k", i))
	}
	if len(r.counts) > repeatKeys {
		t.Errorf("%d keys kept, at most %d", len(r.counts), repeatKeys)
	}
}
