package state

import (
	"context"
	"fmt"
	"sync"

	"k8s.io/apimachinery/pkg/util/validation"
)

// MemoryStore keeps state in memory only, for tests and for runs that must
// not persist anything (--no-state). It is safe for concurrent use.
type MemoryStore struct {
	mu      sync.Mutex
	state   State
	secrets map[string]string
}

var _ Store = (*MemoryStore)(nil)

// NewMemory returns an empty MemoryStore.
func NewMemory() *MemoryStore { return &MemoryStore{secrets: map[string]string{}} }

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

// LoadSecret implements Store.
func (m *MemoryStore) LoadSecret(_ context.Context, key string) (string, error) {
	if err := checkKey(key); err != nil {
		return "", err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	v, ok := m.secrets[key]
	if !ok {
		return "", fmt.Errorf("%w: %q", ErrNotFound, key)
	}
	return v, nil
}

// SaveSecret implements Store.
func (m *MemoryStore) SaveSecret(_ context.Context, key, value string) error {
	if err := checkKey(key); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.secrets[key] = value
	return nil
}

// checkKey applies the Kubernetes data key rules to every store.
func checkKey(key string) error {
	if msgs := validation.IsConfigMapKey(key); len(msgs) > 0 {
		return fmt.Errorf("%w: %q: %s", ErrInvalidKey, key, msgs[0])
	}
	return nil
}
