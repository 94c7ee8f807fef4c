package state

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
)

// StateFileMode is the mode of a FileStore's file: it holds nothing secret.
const StateFileMode fs.FileMode = 0o644

// FileStore keeps state in a JSON file, for agents run outside a cluster.
// Every write goes to a temporary file in the same directory that is then
// renamed over the old one, so a crash leaves the old or the new content,
// never a partial file.
//
// A FileStore is safe for concurrent use within one process. Two processes
// sharing the file are not coordinated: the last write wins.
type FileStore struct {
	path string
	mu   sync.Mutex // serialises writes: the file holds the last Save to return
}

var _ Store = (*FileStore)(nil)

// NewFile returns a FileStore for the state file at path. The directory
// must exist; the file is created on the first save.
func NewFile(path string) *FileStore { return &FileStore{path: path} }

// Path returns the state file's path.
func (f *FileStore) Path() string { return f.path }

// Load implements Store. A missing file is the zero State.
func (f *FileStore) Load(context.Context) (State, error) {
	var s State
	if err := readJSON(f.path, &s); err != nil {
		return State{}, err
	}
	return s, nil
}

// Save implements Store.
func (f *FileStore) Save(_ context.Context, s State) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return writeJSON(f.path, stamp(s))
}

// readJSON decodes the file at path into v, leaving v alone when the file
// does not exist.
func readJSON(path string, v any) error {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("state: reading %s: %w", path, err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%w: %s: %w", ErrCorrupt, path, err)
	}
	return nil
}

// writeJSON atomically replaces the file at path with v's JSON encoding,
// with mode StateFileMode.
func writeJSON(path string, v any) (err error) {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("state: encoding %s: %w", path, err)
	}
	// CreateTemp makes the file 0600 whatever the umask; the Chmod below
	// gives it the mode the rename then keeps.
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("state: writing %s: %w", path, err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err := tmp.Chmod(StateFileMode); err != nil {
		return fmt.Errorf("state: writing %s: %w", path, err)
	}
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("state: writing %s: %w", path, err)
	}
	// Without the sync a crash after the rename can leave an empty file.
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("state: writing %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("state: writing %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("state: writing %s: %w", path, err)
	}
	return nil
}
