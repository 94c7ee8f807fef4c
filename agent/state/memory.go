package state

import (
	"context"
	"sync"
)

// MemoryStore keeps state in memory only, for tests: an agent that forgets
// its cluster id on restart registers as a new cluster every time, so no
// production setting selects it. It is safe for concurrent use.
type MemoryStore struct {
	mu    sync.Mutex
	state State
}

var _ Store = (*MemoryStore)(nil)

// NewMemory returns an empty MemoryStore.
func NewMemory() *MemoryStore { return &MemoryStore{} }

// Load implements Store.
func (m *MemoryStore) Load(context.Context) (State, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.state, nil
}

// Save implements Store.
func (m *MemoryStore) Save(_ context.Context, s State) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.state = stamp(s)
	return nil
}
