package kubeletsim

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io/fs"
	"reflect"
	"strings"
	"testing"
	"time"

	"k8s.io/cri-streaming/pkg/streaming/remotecommand"
)

// runCmd runs argv in fs with stdin and returns the outputs and exit code.
func runCmd(t *testing.T, f *memFS, tty *terminal, stdin string, argv ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var out, errOut bytes.Buffer
	p := &proc{ctx: ctx, fs: f, stdin: strings.NewReader(stdin), stdout: &out, stderr: &errOut, tty: tty}
	res := p.run(argv)
	return out.String(), errOut.String(), res.code
}

// emptyArchive is a tar archive with no members: its end marker.
var emptyArchive = strings.Repeat("\x00", 1024)

func TestCommands(t *testing.T) {
	sized := newTerminal()
	sized.set(remotecommand.TerminalSize{Width: 80, Height: 24})
	cases := []struct {
		name    string
		argv    []string
		stdin   string
		tty     *terminal
		stdout  string
		stderr  string // a substring
		code    int
		setupFS map[string]string
	}{
		{name: "cat stdin", argv: []string{"cat"}, stdin: "a\nb\n", stdout: "a\nb\n"},
		{name: "cat stops at ^D on a tty", argv: []string{"cat"}, stdin: "typed\x04ignored", tty: newTerminal(), stdout: "typed"},
		{name: "cat ignores ^D without a tty", argv: []string{"cat"}, stdin: "a\x04b", stdout: "a\x04b"},
		{name: "cat file", argv: []string{"cat", "/etc/motd"}, setupFS: map[string]string{"/etc/motd": "hi\n"}, stdout: "hi\n"},
		{name: "cat missing file", argv: []string{"cat", "/nope"}, stderr: "file does not exist", code: 1},
		{name: "echo", argv: []string{"echo", "a", "b"}, stdout: "a b\n"},
		{name: "echo -n", argv: []string{"echo", "-n", "a"}, stdout: "a"},
		{name: "true", argv: []string{"true"}},
		{name: "false", argv: []string{"false"}, code: 1},
		{name: "exit", argv: []string{"exit", "42"}, code: 42},
		{name: "exit bad", argv: []string{"exit", "x"}, stderr: "numeric", code: 2},
		{name: "sh -c exit", argv: []string{"sh", "-c", "exit 3"}, code: 3},
		{name: "sh -c stops at exit", argv: []string{"sh", "-c", "echo a; exit 4; echo b"}, stdout: "a\n", code: 4},
		{name: "sh -c last status", argv: []string{"sh", "-c", "true; false"}, code: 1},
		{name: "sh -c quoting", argv: []string{"sh", "-c", `echo 'a  b' "c \"d\"" e\ f`}, stdout: "a  b c \"d\" e f\n"},
		{name: "sh -c pipe refused", argv: []string{"sh", "-c", "echo a | cat"}, stderr: "not supported", code: 2},
		{name: "sh reads lines", argv: []string{"sh"}, stdin: "echo one\recho two\nexit 5\necho never\n", stdout: "one\ntwo\n", code: 5},
		{name: "sh ends at EOF", argv: []string{"sh"}, stdin: "false\n", code: 1},
		{name: "unknown", argv: []string{"vim"}, stderr: "command not found", code: 127},
		{name: "test -d", argv: []string{"test", "-d", "/tmp"}},
		{name: "test -d on file", argv: []string{"test", "-d", "/f"}, setupFS: map[string]string{"/f": ""}, code: 1},
		{name: "test -f", argv: []string{"test", "-f", "/f"}, setupFS: map[string]string{"/f": ""}},
		{name: "test -e missing", argv: []string{"test", "-e", "/nope"}, code: 1},
		{name: "stty size", argv: []string{"stty", "size"}, tty: sized, stdout: "24 80\n"},
		{name: "stty without tty", argv: []string{"stty", "size"}, stderr: "ioctl", code: 1},
		{name: "sleep 0", argv: []string{"sleep", "0"}},
		{name: "tar without mode", argv: []string{"tar", "f", "-"}, stderr: "-c' or '-x", code: 2},
		{name: "tar to a file", argv: []string{"tar", "cf", "/out.tar", "/tmp"}, stderr: "stdio", code: 2},
		{name: "tar missing path", argv: []string{"tar", "cf", "-", "/nope"}, stdout: emptyArchive, stderr: "Cannot stat", code: 2},
		{name: "tar x into missing dir", argv: []string{"tar", "-xmf", "-", "-C", "/nope"}, stderr: "Cannot open", code: 2},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newMemFS()
			for p, data := range tc.setupFS {
				if err := f.writeFile(p, []byte(data)); err != nil {
					t.Fatal(err)
				}
			}
			stdout, stderr, code := runCmd(t, f, tc.tty, tc.stdin, tc.argv...)
			if code != tc.code || stdout != tc.stdout || !strings.Contains(stderr, tc.stderr) {
				t.Fatalf("%q: code %d stdout %q stderr %q; want code %d stdout %q stderr containing %q",
					tc.argv, code, stdout, stderr, tc.code, tc.stdout, tc.stderr)
			}
		})
	}
}

// TestTarRoundTrip: what tar cf writes, tar xf reads back elsewhere, in the
// layout kubectl cp expects (names relative to "/").
func TestTarRoundTrip(t *testing.T) {
	src := newMemFS()
	files := map[string]string{"/data/a.txt": "a\n", "/data/sub/b.bin": "\x00\x01\x02", "/data/sub/deeper/c": ""}
	for p, data := range files {
		if err := src.writeFile(p, []byte(data)); err != nil {
			t.Fatal(err)
		}
	}
	if err := src.mkdirAll("/data/empty"); err != nil {
		t.Fatal(err)
	}
	archive, stderr, code := runCmd(t, src, nil, "", "tar", "cf", "-", "/data")
	if code != 0 {
		t.Fatalf("tar cf: %d %s", code, stderr)
	}
	var names []string
	tr := tar.NewReader(strings.NewReader(archive))
	for {
		hdr, err := tr.Next()
		if err != nil {
			break
		}
		names = append(names, hdr.Name)
	}
	want := []string{"data/", "data/a.txt", "data/empty/", "data/sub/", "data/sub/b.bin", "data/sub/deeper/", "data/sub/deeper/c"}
	if !reflect.DeepEqual(names, want) {
		t.Fatalf("archive members %q, want %q", names, want)
	}

	dst := newMemFS()
	if _, stderr, code := runCmd(t, dst, nil, archive, "tar", "-xmf", "-", "-C", "/tmp"); code != 0 {
		t.Fatalf("tar xmf: %d %s", code, stderr)
	}
	for p, data := range files {
		got, err := dst.readFile("/tmp" + p)
		if err != nil || string(got) != data {
			t.Errorf("%s after the round trip: %q (%v), want %q", p, got, err, data)
		}
	}
	if _, isDir := dst.stat("/tmp/data/empty"); !isDir {
		t.Error("empty directory lost in the round trip")
	}
}

func tarOf(t testing.TB, entries ...*tar.Header) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, hdr := range entries {
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if hdr.Typeflag == tar.TypeReg {
			if _, err := tw.Write(bytes.Repeat([]byte("x"), int(hdr.Size))); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestExtractTarConfined: member names cannot leave the target directory,
// other entry types are skipped with a warning, and a file in the way of a
// directory is an error.
func TestExtractTarConfined(t *testing.T) {
	f := newMemFS()
	archive := tarOf(t,
		&tar.Header{Typeflag: tar.TypeReg, Name: "../../etc/passwd", Size: 3},
		&tar.Header{Typeflag: tar.TypeReg, Name: "/abs", Size: 1},
		&tar.Header{Typeflag: tar.TypeSymlink, Name: "link", Linkname: "/etc"},
	)
	var warn bytes.Buffer
	if err := f.extractTar(bytes.NewReader(archive), "/tmp", &warn); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"/tmp/etc/passwd", "/tmp/abs"} {
		if exists, _ := f.stat(p); !exists {
			t.Errorf("%s not extracted", p)
		}
	}
	if exists, _ := f.stat("/etc/passwd"); exists {
		t.Error("a member climbed out of the target directory")
	}
	if !strings.Contains(warn.String(), "link") {
		t.Errorf("no warning for the symlink: %q", warn.String())
	}
	blocked := tarOf(t, &tar.Header{Typeflag: tar.TypeReg, Name: "tmp/abs/x", Size: 1})
	if err := f.extractTar(bytes.NewReader(blocked), "/", &warn); err == nil {
		t.Error("extracting below a file succeeded")
	}
}

func TestMemFSLimits(t *testing.T) {
	f := newMemFS()
	if err := f.writeFile("/big", make([]byte, maxFileSize+1)); !errors.Is(err, errTooLarge) {
		t.Fatalf("oversize file: %v, want errTooLarge", err)
	}
	if _, err := f.readFile("/big"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("read of a refused file: %v, want fs.ErrNotExist", err)
	}
	// Claim a size over the limit in the header without carrying the data.
	hdr := &tar.Header{Typeflag: tar.TypeReg, Name: "huge", Size: maxFileSize + 1}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(hdr); err != nil {
		t.Fatal(err)
	}
	if err := f.extractTar(&buf, "/tmp", &bytes.Buffer{}); !errors.Is(err, errTooLarge) {
		t.Fatalf("oversize member: %v, want errTooLarge", err)
	}
}

func TestTailStart(t *testing.T) {
	cases := []struct {
		data string
		n    int
		want string
	}{
		{"a\nb\nc\n", -1, "a\nb\nc\n"},
		{"a\nb\nc\n", 0, ""},
		{"a\nb\nc\n", 1, "c\n"},
		{"a\nb\nc\n", 2, "b\nc\n"},
		{"a\nb\nc\n", 3, "a\nb\nc\n"},
		{"a\nb\nc\n", 9, "a\nb\nc\n"},
		{"a\nb", 1, "b"},
		{"a\nb", 0, ""},
		{"", 1, ""},
		{"\n\n", 1, "\n"},
	}
	for _, tc := range cases {
		if got := tc.data[tailStart([]byte(tc.data), tc.n):]; got != tc.want {
			t.Errorf("tail %d of %q = %q, want %q", tc.n, tc.data, got, tc.want)
		}
	}
}

var scriptSeeds = []string{
	"exit 3", "echo a; exit 4; echo b", `echo 'a  b' "c \"d\"" e\ f`, "echo a | cat", "true\nfalse", `"unterminated`, `'x`, `\`,
}

func TestParseScript(t *testing.T) {
	cases := []struct {
		script string
		want   [][]string
		err    bool
	}{
		{"exit 3", [][]string{{"exit", "3"}}, false},
		{" echo  a ;; echo b\n", [][]string{{"echo", "a"}, {"echo", "b"}}, false},
		{`echo '' ""`, [][]string{{"echo", "", ""}}, false},
		{`echo 'a  b' "c \"d\"" e\ f`, [][]string{{"echo", "a  b", `c "d"`, "e f"}}, false},
		{"echo a | cat", nil, true},
		{"echo $HOME", nil, true},
		{`echo "$HOME"`, nil, true},
		{`"unterminated`, nil, true},
		{`'x`, nil, true},
	}
	for _, tc := range cases {
		got, err := parseScript(tc.script)
		if (err != nil) != tc.err || (!tc.err && !reflect.DeepEqual(got, tc.want)) {
			t.Errorf("parseScript(%q) = %q, %v; want %q, error %v", tc.script, got, err, tc.want, tc.err)
		}
	}
}

func FuzzParseScript(f *testing.F) {
	for _, s := range scriptSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		cmds, err := parseScript(s)
		if err != nil {
			return
		}
		for _, argv := range cmds {
			if len(argv) == 0 {
				t.Fatalf("parseScript(%q) made an empty command", s)
			}
		}
	})
}

// FuzzExtractTar: no archive makes extraction panic or write outside the
// target directory.
func FuzzExtractTar(f *testing.F) {
	f.Add(tarOf(f, &tar.Header{Typeflag: tar.TypeReg, Name: "../../etc/passwd", Size: 3}))
	f.Add(tarOf(f, &tar.Header{Typeflag: tar.TypeDir, Name: "d/"}, &tar.Header{Typeflag: tar.TypeReg, Name: "d/f", Size: 2}))
	f.Add([]byte("not a tar archive"))
	f.Fuzz(func(t *testing.T, archive []byte) {
		m := newMemFS()
		_ = m.mkdirAll("/target")
		_ = m.extractTar(bytes.NewReader(archive), "/target", &bytes.Buffer{})
		dirs, files := m.tree("/")
		for _, d := range dirs {
			if d != "/" && d != "/tmp" && d != "/target" && !strings.HasPrefix(d, "/target/") {
				t.Fatalf("directory %s made outside /target", d)
			}
		}
		for p := range files {
			if !strings.HasPrefix(p, "/target/") {
				t.Fatalf("file %s made outside /target", p)
			}
		}
	})
}
