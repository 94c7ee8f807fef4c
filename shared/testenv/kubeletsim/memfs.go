package kubeletsim

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"sort"
	"strings"
	"sync"
	"time"
)

// Limits on a container's file system. They bound what a test (or a broken
// archive) can make the test binary hold in memory; going over them is an
// error, never a silent truncation.
const (
	maxFileSize  = 64 << 20
	maxTotalSize = 256 << 20
)

var (
	errNotExist = fs.ErrNotExist
	errTooLarge = errors.New("file system limit exceeded")
)

// memFS is the file system of one container: regular files and
// directories in memory, addressed by absolute slash paths. It is safe for
// concurrent use (an exec writing while the test reads).
type memFS struct {
	mu    sync.Mutex
	files map[string][]byte
	dirs  map[string]bool
	total int
}

func newMemFS() *memFS {
	return &memFS{files: map[string][]byte{}, dirs: map[string]bool{"/": true, "/tmp": true}}
}

// cleanPath makes p absolute and clean; ".." can never climb above "/".
func cleanPath(p string) string { return path.Clean("/" + p) }

func (f *memFS) stat(p string) (exists, isDir bool) {
	p = cleanPath(p)
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.dirs[p] {
		return true, true
	}
	_, ok := f.files[p]
	return ok, false
}

func (f *memFS) readFile(p string) ([]byte, error) {
	p = cleanPath(p)
	f.mu.Lock()
	defer f.mu.Unlock()
	data, ok := f.files[p]
	if !ok {
		if f.dirs[p] {
			return nil, fmt.Errorf("read %s: is a directory", p)
		}
		return nil, fmt.Errorf("read %s: %w", p, errNotExist)
	}
	return append([]byte(nil), data...), nil
}

// writeFile creates or replaces the file p, creating its parent directories
// as `mkdir -p` would.
func (f *memFS) writeFile(p string, data []byte) error {
	p = cleanPath(p)
	if len(data) > maxFileSize {
		return fmt.Errorf("write %s: %d bytes: %w (%d per file)", p, len(data), errTooLarge, maxFileSize)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.dirs[p] {
		return fmt.Errorf("write %s: is a directory", p)
	}
	if err := f.mkdirAllLocked(path.Dir(p)); err != nil {
		return err
	}
	total := f.total - len(f.files[p]) + len(data)
	if total > maxTotalSize {
		return fmt.Errorf("write %s: %w (%d in all)", p, errTooLarge, maxTotalSize)
	}
	f.files[p] = append([]byte(nil), data...)
	f.total = total
	return nil
}

func (f *memFS) mkdirAll(p string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.mkdirAllLocked(cleanPath(p))
}

func (f *memFS) mkdirAllLocked(p string) error {
	for d := p; ; d = path.Dir(d) {
		if _, isFile := f.files[d]; isFile {
			return fmt.Errorf("mkdir %s: %s is not a directory", p, d)
		}
		if d == "/" {
			break
		}
	}
	for d := p; !f.dirs[d]; d = path.Dir(d) {
		f.dirs[d] = true
	}
	return nil
}

// tree returns root and everything below it, sorted so that a directory
// comes before its contents.
func (f *memFS) tree(root string) (dirs []string, files map[string][]byte) {
	root = cleanPath(root)
	prefix := strings.TrimSuffix(root, "/") + "/"
	f.mu.Lock()
	defer f.mu.Unlock()
	files = map[string][]byte{}
	for d := range f.dirs {
		if d == root || strings.HasPrefix(d, prefix) {
			dirs = append(dirs, d)
		}
	}
	for p, data := range f.files {
		if strings.HasPrefix(p, prefix) {
			files[p] = data
		}
	}
	sort.Strings(dirs)
	return dirs, files
}

// writeTar writes p (a file, or a directory with all it holds) to w as GNU
// tar would for `tar cf - p`: member names relative to "/", directories
// first.
func (f *memFS) writeTar(tw *tar.Writer, p string) error {
	p = cleanPath(p)
	exists, isDir := f.stat(p)
	if !exists {
		return fmt.Errorf("%s: Cannot stat: No such file or directory", p)
	}
	now := time.Now()
	name := func(p string) string { return strings.TrimPrefix(p, "/") }
	if !isDir {
		data, err := f.readFile(p)
		if err != nil {
			return err
		}
		return writeTarFile(tw, name(p), data, now)
	}
	dirs, files := f.tree(p)
	for _, d := range dirs {
		if d != "/" {
			hdr := &tar.Header{Typeflag: tar.TypeDir, Name: name(d) + "/", Mode: 0o755, ModTime: now}
			if err := tw.WriteHeader(hdr); err != nil {
				return err
			}
		}
		var inDir []string
		for fp := range files {
			if path.Dir(fp) == d {
				inDir = append(inDir, fp)
			}
		}
		sort.Strings(inDir)
		for _, fp := range inDir {
			if err := writeTarFile(tw, name(fp), files[fp], now); err != nil {
				return err
			}
		}
	}
	return nil
}

func writeTarFile(tw *tar.Writer, name string, data []byte, mtime time.Time) error {
	hdr := &tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(data)), ModTime: mtime}
	if err := tw.WriteHeader(hdr); err != nil {
		return err
	}
	_, err := tw.Write(data)
	return err
}

// extractTar unpacks the archive r into dir, which must exist, as
// `tar xf - -C dir` would. Member names cannot climb out of dir. Entries
// other than files and directories (links, devices) are reported to warn and
// skipped. A member over the size limits fails the extraction.
func (f *memFS) extractTar(r io.Reader, dir string, warn io.Writer) error {
	dir = cleanPath(dir)
	if exists, isDir := f.stat(dir); !exists || !isDir {
		return fmt.Errorf("%s: Cannot open: No such file or directory", dir)
	}
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read archive: %w", err)
		}
		target := path.Join(dir, cleanPath(hdr.Name))
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := f.mkdirAll(target); err != nil {
				return err
			}
		case tar.TypeReg:
			if hdr.Size > maxFileSize {
				return fmt.Errorf("%s: %d bytes: %w (%d per file)", hdr.Name, hdr.Size, errTooLarge, maxFileSize)
			}
			data, err := io.ReadAll(io.LimitReader(tr, maxFileSize+1))
			if err != nil {
				return fmt.Errorf("read %s from archive: %w", hdr.Name, err)
			}
			if err := f.writeFile(target, data); err != nil {
				return err
			}
		default:
			fmt.Fprintf(warn, "tar: %s: entry type %q not supported by kubeletsim, skipped\n", hdr.Name, hdr.Typeflag)
		}
	}
}
