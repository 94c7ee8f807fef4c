package images

import (
	"bytes"
	"context"
	"debug/elf"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moby/patternmatcher"
	"github.com/moby/patternmatcher/ignorefile"

	agentconfig "github.com/pipeops/tunnel/agent/config"
	"github.com/pipeops/tunnel/controlplane/cli"
	"github.com/pipeops/tunnel/gateway/server"
	"github.com/pipeops/tunnel/shared/testenv"
)

const (
	distroless = "gcr.io/distroless/static-debian12:nonroot"
	runtimeUID = 65532
	modulePath = "github.com/pipeops/tunnel"
)

// target is one image: its Dockerfile target, the binary in it and the
// ports it must EXPOSE.
type target struct {
	name, binary string
	ports        func(t *testing.T) []string
}

// The ports come from the binaries' own configuration defaults, so that a
// changed default shows up here as a wrong EXPOSE.
var targets = []target{
	{"agent", "pipeops-agent", func(t *testing.T) []string {
		c, err := agentconfig.Load(nil, mapEnv(map[string]string{"PIPEOPS_API_URL": "http://cp:8080", "PIPEOPS_TOKEN": "x", "PIPEOPS_AGENT_ID": "a"}))
		if err != nil {
			t.Fatalf("agent config: %v", err)
		}
		return []string{port(t, c.ListenAddr)}
	}},
	{"gateway", "pipeops-gateway", func(t *testing.T) []string {
		c, err := server.LoadConfig(mapEnv(map[string]string{"DATABASE_URL": "postgres://db/x", "CONTROLPLANE_URL": "http://cp:8080"}))
		if err != nil {
			t.Fatalf("gateway config: %v", err)
		}
		// HTTPS has no default address; the images and the compose file use :8443.
		return []string{port(t, c.HTTPAddr), "8443", port(t, c.AdminAddr)}
	}},
	{"controlplane", "pipeops-controlplane", func(t *testing.T) []string {
		c, err := cli.LoadConfig(mapEnv(map[string]string{"DATABASE_URL": "postgres://db/x"}))
		if err != nil {
			t.Fatalf("controlplane config: %v", err)
		}
		return []string{port(t, c.ListenAddr)}
	}},
}

func mapEnv(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func port(t *testing.T, addr string) string {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("listen address %q: %v", addr, err)
	}
	return p
}

func loadDockerfile(t *testing.T) *dockerfile {
	t.Helper()
	df, err := parseDockerfile(filepath.Join(testenv.Root(t), "deploy", "images", "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	return df
}

// expandGlobal expands ${NAME} in a FROM line with the global ARG defaults.
func expandGlobal(df *dockerfile, s string) string {
	return os.Expand(s, func(k string) string {
		if k == "BUILDPLATFORM" || k == "TARGETPLATFORM" {
			return "$" + k
		}
		return df.GlobalArgs[k]
	})
}

func TestTargets(t *testing.T) {
	df := loadDockerfile(t)
	for _, tg := range targets {
		t.Run(tg.name, func(t *testing.T) {
			s := df.stage(tg.name)
			if s == nil {
				t.Fatalf("no stage %q (docker build --target %s)", tg.name, tg.name)
			}
			if base := expandGlobal(df, df.baseImage(s)); base != distroless && base != "scratch" {
				t.Errorf("final image starts from %q, want %s or scratch", base, distroless)
			}
			if s.Platform != "" {
				t.Errorf("final stage pins --platform=%s; it must be the target platform", s.Platform)
			}

			user, ok := df.last(s, "USER")
			if !ok {
				t.Fatal("no USER: the image would run as root")
			}
			uid, gid, found := strings.Cut(user.Args, ":")
			u, err := strconv.Atoi(uid)
			if err != nil || u == 0 {
				t.Errorf("USER %q: want a numeric non-root uid (Kubernetes runAsNonRoot can only check numbers)", user.Args)
			}
			if g, err := strconv.Atoi(gid); !found || err != nil || g == 0 {
				t.Errorf("USER %q: want a numeric non-root uid:gid", user.Args)
			}
			if u != runtimeUID {
				t.Errorf("USER %d: the compose file, the Helm chart and the volumes assume %d", u, runtimeUID)
			}

			ep, ok := df.last(s, "ENTRYPOINT")
			if !ok {
				t.Fatal("no ENTRYPOINT")
			}
			var argv []string
			if err := json.Unmarshal([]byte(ep.Args), &argv); err != nil || len(argv) == 0 {
				t.Fatalf("ENTRYPOINT %s: want the exec form [\"/path/binary\"] (there is no shell in the image)", ep.Args)
			}
			binPath := "/usr/local/bin/" + tg.binary
			if argv[0] != binPath {
				t.Errorf("ENTRYPOINT runs %q, want %q", argv[0], binPath)
			}
			copied := false
			for _, c := range s.all("COPY") {
				if slices.Contains(c.Flags, "--from=build") && c.Args == "/out/"+tg.binary+" "+binPath {
					copied = true
				}
			}
			if !copied {
				t.Errorf("no COPY --from=build /out/%s %s", tg.binary, binPath)
			}

			var exposed []string
			for _, e := range s.all("EXPOSE") {
				exposed = append(exposed, strings.Fields(e.Args)...)
			}
			want := tg.ports(t)
			slices.Sort(exposed)
			slices.Sort(want)
			if !slices.Equal(exposed, want) {
				t.Errorf("EXPOSE %v, want %v (the binary's listen addresses)", exposed, want)
			}

			labels := strings.Join(append(instArgs(s.all("LABEL")), instArgs(df.stage("runtime").all("LABEL"))...), " ")
			for _, l := range []string{"org.opencontainers.image.title=\"" + tg.binary + "\"", "org.opencontainers.image.description=",
				"org.opencontainers.image.source=", "org.opencontainers.image.version=\"${VERSION}\"", "org.opencontainers.image.revision=\"${COMMIT}\""} {
				if !strings.Contains(labels, l) {
					t.Errorf("missing OCI label %s", l)
				}
			}
		})
	}
}

func instArgs(ins []instruction) []string {
	var out []string
	for _, in := range ins {
		out = append(out, in.Args)
	}
	return out
}

func TestBuildStage(t *testing.T) {
	df := loadDockerfile(t)
	b := df.stage("build")
	if b == nil {
		t.Fatal("no stage named build")
	}
	if b.Platform != "$BUILDPLATFORM" {
		t.Errorf("build stage --platform=%q, want $BUILDPLATFORM (cross-compile natively, no emulation)", b.Platform)
	}
	if img := expandGlobal(df, b.Base); img != "golang:"+goMinor(t) {
		t.Errorf("build stage FROM %s, want golang:%s (the go.mod version)", img, goMinor(t))
	}
	// Order: modules, then go mod download, then the sources, then go build:
	// the download layer survives source changes.
	var order []string
	for _, in := range b.Instructions {
		switch {
		case in.Cmd == "COPY" && in.Args == "go.mod go.sum ./":
			order = append(order, "copy go.mod")
		case in.Cmd == "RUN" && strings.Contains(in.Args, "go mod download"):
			order = append(order, "download")
			if !slices.Contains(in.Flags, "--mount=type=cache,target=/go/pkg/mod") {
				t.Error("go mod download without the module cache mount")
			}
		case in.Cmd == "COPY" && in.Args == ". .":
			order = append(order, "copy sources")
		case in.Cmd == "RUN" && strings.Contains(in.Args, "go build"):
			order = append(order, "build")
		}
	}
	if want := []string{"copy go.mod", "download", "copy sources", "build"}; !slices.Equal(order, want) {
		t.Errorf("build stage steps %v, want %v", order, want)
	}

	words := buildCommand(t, df, "amd64")
	env, args := splitAssignments(words)
	for k, v := range map[string]string{"CGO_ENABLED": "0", "GOOS": "linux", "GOARCH": "amd64"} {
		if env[k] != v {
			t.Errorf("go build runs with %s=%q, want %q (from $TARGETOS/$TARGETARCH)", k, env[k], v)
		}
	}
	if len(args) < 2 || args[0] != "go" || args[1] != "build" {
		t.Fatalf("build command %q is not go build", words)
	}
	for _, tg := range targets {
		if pkg := "./" + tg.name + "/cmd/" + tg.binary; !slices.Contains(args, pkg) {
			t.Errorf("go build does not build %s", pkg)
		}
	}
	if !slices.Contains(args, "-trimpath") {
		t.Error("go build without -trimpath")
	}
	ldflags := flagValue(args, "-ldflags")
	for _, want := range []string{"-s", "-w", "-X", modulePath + "/shared/version.Version=v0.0.0-test", modulePath + "/shared/version.Commit=0123456789ab"} {
		if !slices.Contains(strings.Fields(ldflags), want) {
			t.Errorf("-ldflags %q lacks %q", ldflags, want)
		}
	}
	// `make build` and the images must stamp the same version variables.
	mk, err := os.ReadFile(filepath.Join(testenv.Root(t), "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^LDFLAGS\s*:=(.*)$`).FindSubmatch(mk)
	if m == nil {
		t.Fatal("no LDFLAGS in the Makefile")
	}
	xVars := func(flags string) []string {
		var vars []string
		for _, x := range regexp.MustCompile(`-X (\S+)=`).FindAllStringSubmatch(flags, -1) {
			vars = append(vars, strings.ReplaceAll(x[1], "$(MODULE)", modulePath))
		}
		slices.Sort(vars)
		return vars
	}
	if mkVars, dfVars := xVars(string(m[1])), xVars(ldflags); !slices.Equal(mkVars, dfVars) {
		t.Errorf("the Dockerfile sets %v with -X, the Makefile %v", dfVars, mkVars)
	}
}

func goMinor(t *testing.T) string {
	data, err := os.ReadFile(filepath.Join(testenv.Root(t), "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^go (\d+\.\d+)`).FindSubmatch(data)
	if m == nil {
		t.Fatal("no go directive in go.mod")
	}
	return string(m[1])
}

// buildCommand returns the words of the Dockerfile's go build RUN, expanded
// as Docker would for TARGETARCH=arch, with test values for VERSION and
// COMMIT.
func buildCommand(t *testing.T, df *dockerfile, arch string) []string {
	t.Helper()
	b := df.stage("build")
	buildArgs := map[string]string{"TARGETOS": "linux", "TARGETARCH": arch, "VERSION": "v0.0.0-test", "COMMIT": "0123456789ab"}
	declared := map[string]string{}
	for _, in := range b.Instructions {
		switch in.Cmd {
		case "ARG":
			name, def, _ := strings.Cut(in.Args, "=")
			if v, ok := buildArgs[name]; ok {
				def = v
			}
			declared[name] = def
		case "RUN":
			if !strings.Contains(in.Args, "go build") {
				continue
			}
			words, err := shellWords(in.Args, func(k string) (string, bool) { v, ok := declared[k]; return v, ok })
			if err != nil {
				t.Fatalf("Dockerfile line %d: %v", in.Line, err)
			}
			return words
		}
	}
	t.Fatal("no RUN with go build in the build stage")
	return nil
}

func splitAssignments(words []string) (map[string]string, []string) {
	env := map[string]string{}
	for i, w := range words {
		k, v, ok := strings.Cut(w, "=")
		if !ok || strings.ContainsAny(k, "-/") {
			return env, words[i:]
		}
		env[k] = v
	}
	return env, nil
}

func flagValue(args []string, name string) string {
	for i, a := range args {
		if a == name && i+1 < len(args) {
			return args[i+1]
		}
		if v, ok := strings.CutPrefix(a, name+"="); ok {
			return v
		}
	}
	return ""
}

// TestBinaries runs the Dockerfile's go build line, as written, for amd64
// and arm64 in a copy of the build context, then checks the binaries: static,
// for the right machine, stripped, and (amd64) running as uid 65532 in a root
// that holds nothing but the binary and the CA bundle, which is all the
// distroless image adds that a binary could need.
func TestBinaries(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the three binaries for two architectures")
	}
	df := loadDockerfile(t)
	ctxDir := buildContext(t, testenv.Root(t))

	machines := map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}
	out := map[string]string{}
	for _, arch := range []string{"amd64", "arm64"} {
		words := buildCommand(t, df, arch)
		env, args := splitAssignments(words)
		if arch == "arm64" {
			// A cold arm64 build of the agent (client-go) takes about 7.5 of the
			// 9.5 minutes the three binaries need on 2 cores; the flags are the
			// same for every package, so gateway and control plane prove them.
			// `make build-all` cross-builds the arm64 agent.
			args = slices.DeleteFunc(args, func(a string) bool { return a == "./agent/cmd/pipeops-agent" })
		}
		outDir := filepath.Join(t.TempDir(), arch)
		if o := flagValue(args, "-o"); o != "/out/" {
			t.Fatalf("go build -o %q: the final stages copy from /out/", o)
		}
		for i, a := range args {
			if a == "-o" {
				args[i+1] = outDir + "/"
			}
		}
		cmd := exec.Command(args[0], args[1:]...)
		cmd.Dir = filepath.Join(ctxDir, "src") // WORKDIR /src
		cmd.Env = buildEnv(env)
		var stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stderr, &stderr
		start := time.Now()
		if err := cmd.Run(); err != nil {
			t.Fatalf("%s (%s): %v\n%s", strings.Join(words, " "), arch, err, stderr.String())
		}
		t.Logf("go build for linux/%s: %s", arch, time.Since(start).Round(100*time.Millisecond))
		out[arch] = outDir
	}

	for _, tg := range targets {
		for arch, machine := range machines {
			if arch == "arm64" && tg.name == "agent" {
				continue
			}
			t.Run(tg.binary+"/"+arch, func(t *testing.T) {
				checkStatic(t, filepath.Join(out[arch], tg.binary), machine)
			})
		}
		t.Run(tg.binary+"/run-as-65532", func(t *testing.T) {
			if runtime.GOARCH != "amd64" {
				t.Skipf("running the amd64 binary needs an amd64 machine, this is %s", runtime.GOARCH)
			}
			got := runInEmptyRoot(t, filepath.Join(out["amd64"], tg.binary), "--version")
			want := regexp.MustCompile(`^` + tg.binary + ` v0\.0\.0-test \(commit 0123456789ab, go1\.\d+(\.\d+)?[^,]*, linux/amd64\)\n$`)
			if !want.MatchString(got) {
				t.Errorf("%s --version printed %q, want %s", tg.binary, got, want)
			}
		})
	}
}

// buildEnv is the environment of the go build: ours for the caches, without
// anything that would change what is built, plus the Dockerfile's variables.
// GOTOOLCHAIN=local as in the golang image.
func buildEnv(assign map[string]string) []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case "GOFLAGS", "GOOS", "GOARCH", "CGO_ENABLED", "GOTOOLCHAIN", "GOEXPERIMENT", "GOAMD64", "GOARM64", "GOWORK":
			continue
		}
		env = append(env, kv)
	}
	env = append(env, "GOTOOLCHAIN=local", "GOWORK=off")
	for k, v := range assign {
		env = append(env, k+"="+v)
	}
	return env
}

// buildContext copies what .dockerignore lets into the build context to
// dir/src (the Dockerfile's WORKDIR), so the build sees exactly the files
// Docker would send. Excluded directories are not walked unless an exception
// pattern may match inside them, as Docker does.
func buildContext(t *testing.T, root string) string {
	t.Helper()
	f, err := os.Open(filepath.Join(root, ".dockerignore"))
	if err != nil {
		t.Fatalf(".dockerignore: %v", err)
	}
	patterns, err := ignorefile.ReadAll(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	pm, err := patternmatcher.New(patterns)
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(t.TempDir(), "src")
	files := 0
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, path)
		if err != nil || rel == "." {
			return err
		}
		excluded, err := pm.MatchesOrParentMatches(rel)
		if err != nil {
			return err
		}
		if excluded && d.IsDir() {
			if !pm.Exclusions() {
				return filepath.SkipDir
			}
			for _, p := range pm.Patterns() {
				if p.Exclusion() && strings.HasPrefix(p.String()+"/", rel+"/") {
					return nil
				}
			}
			return filepath.SkipDir
		}
		if excluded {
			return nil
		}
		target := filepath.Join(dst, rel)
		switch {
		case d.IsDir():
			return os.MkdirAll(target, 0o755)
		case d.Type().IsRegular():
			files++
			return copyFile(path, target)
		}
		return nil // sockets, symlinks: nothing the build needs
	})
	if err != nil {
		t.Fatalf("build context: %v", err)
	}
	for _, must := range []string{"go.mod", "go.sum", "migrations"} {
		if _, err := os.Stat(filepath.Join(dst, must)); err != nil {
			t.Fatalf(".dockerignore keeps %s out of the build context", must)
		}
	}
	for _, mustNot := range []string{".git", ".env", "secrets", "bin", "dist", ".testenv"} {
		if _, err := os.Stat(filepath.Join(dst, mustNot)); err == nil {
			t.Errorf(".dockerignore lets %s into the build context", mustNot)
		}
	}
	t.Logf("build context: %d files", files)
	return filepath.Dir(dst)
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_EXCL, st.Mode().Perm())
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// checkStatic requires a statically linked, stripped ELF executable for
// machine: no program interpreter, no shared libraries, no symbol table.
func checkStatic(t *testing.T, path string, machine elf.Machine) {
	t.Helper()
	f, err := elf.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if f.Machine != machine {
		t.Errorf("machine %v, want %v", f.Machine, machine)
	}
	if f.Type != elf.ET_EXEC {
		t.Errorf("ELF type %v, want ET_EXEC (a static, non-PIE executable)", f.Type)
	}
	for _, p := range f.Progs {
		switch p.Type {
		case elf.PT_INTERP:
			t.Error("has a PT_INTERP program header: dynamically linked (was CGO_ENABLED=0 lost?)")
		case elf.PT_DYNAMIC:
			t.Error("has a PT_DYNAMIC program header")
		}
	}
	libs, err := f.ImportedLibraries()
	if err != nil && !errors.Is(err, elf.ErrNoSymbols) {
		t.Errorf("reading DT_NEEDED: %v", err)
	}
	if len(libs) > 0 {
		t.Errorf("needs shared libraries (DT_NEEDED): %v", libs)
	}
	if f.Section(".symtab") != nil {
		t.Error("has a symbol table: -ldflags -s was not applied")
	}
	for _, s := range f.Sections {
		if strings.HasPrefix(s.Name, ".debug_") || strings.HasPrefix(s.Name, ".zdebug_") {
			t.Errorf("has DWARF section %s: -ldflags -w was not applied", s.Name)
			break
		}
	}
}

// runInEmptyRoot runs bin with args as uid/gid 65532, chrooted into a
// directory that holds only the binary and etc/ssl/certs/ca-certificates.crt,
// and returns its standard output.
func runInEmptyRoot(t *testing.T, bin string, args ...string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		testenv.Require(t, "chroot", fmt.Errorf("%w: chroot and setuid need root (the test runs as uid %d)", testenv.ErrUnavailable, os.Geteuid()))
	}
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil { // searchable by uid 65532 once it is /
		t.Fatal(err)
	}
	name := filepath.Base(bin)
	if err := copyFile(bin, filepath.Join(dir, "usr", "local", "bin", name)); err != nil {
		t.Fatal(err)
	}
	ca := filepath.Join(dir, "etc", "ssl", "certs", "ca-certificates.crt")
	if err := os.MkdirAll(filepath.Dir(ca), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(ca, []byte("# the distroless image's CA bundle goes here\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"usr", "usr/local", "usr/local/bin", "etc", "etc/ssl", "etc/ssl/certs"} {
		if err := os.Chmod(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "/usr/local/bin/"+name, args...)
	cmd.Dir = "/"
	cmd.Env = []string{"PATH=/usr/local/bin"} // the image's environment has nothing else the binary reads
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Chroot:     dir,
		Credential: &syscall.Credential{Uid: runtimeUID, Gid: runtimeUID, Groups: []uint32{}},
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		if errors.Is(err, syscall.EPERM) {
			testenv.Require(t, "chroot", fmt.Errorf("%w: %v", testenv.ErrUnavailable, err))
		}
		t.Fatalf("%s %s as uid %d in an empty root: %v\nstdout: %s\nstderr: %s", name, strings.Join(args, " "), runtimeUID, err, stdout.String(), stderr.String())
	}
	return stdout.String()
}
