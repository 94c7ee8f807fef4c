package installer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pipeops/tunnel/shared/testenv"
)

// realTools are the only real programs the script may run besides the
// stubs: bash itself and what it needs from coreutils. A program missing
// from this list and from the stubs fails with "command not found", so the
// list is also the script's dependency list.
var realTools = []string{"bash", "sh", "env", "tr", "cat", "mktemp", "rm", "mkdir", "chmod", "install"}

// machine describes a fake machine the script runs on.
type machine struct {
	kernel, arch string // uname -s, uname -m
	procVersion  string // /proc/version; empty: no /proc (macOS)
	initEnviron  string // /proc/1/environ, NUL-separated
	initComm     string // /proc/1/comm
	virt         string // systemd-detect-virt --container; "": the program is missing
	docker       string // "": no docker; "up": docker info works; "down": it fails
	cluster      bool   // kubectl reaches a cluster
	context      string // kubectl config current-context
	metricsAPI   bool   // the metrics API is served
	ingressClass bool   // an IngressClass exists
	tools        []string
	env          []string // extra environment (WSL_DISTRO_NAME=...)
}

// run is one run of the script.
type run struct {
	code           int
	stdout, stderr string
	calls          []string // "name args..." per stub call, in order
}

func (r run) called(prefix string) bool {
	for _, c := range r.calls {
		if strings.HasPrefix(c, prefix) {
			return true
		}
	}
	return false
}

// fakeMachine is a machine's directories; the state directory persists
// between runs, so a second run sees what the first one installed.
type fakeMachine struct {
	t                                    *testing.T
	dir, stubs, tools, root, home, state string
	binDir, tmp, log                     string
	m                                    machine
}

func newMachine(t *testing.T, m machine) *fakeMachine {
	t.Helper()
	dir := t.TempDir()
	f := &fakeMachine{t: t, dir: dir, m: m,
		stubs: filepath.Join(dir, "stubs"), tools: filepath.Join(dir, "tools"), root: filepath.Join(dir, "root"),
		home: filepath.Join(dir, "home"), state: filepath.Join(dir, "state"), binDir: filepath.Join(dir, "bin"),
		tmp: filepath.Join(dir, "tmp"), log: filepath.Join(dir, "calls.log")}
	for _, d := range []string{f.stubs, f.tools, f.root, f.home, f.state, f.binDir, f.tmp} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, tool := range realTools {
		path, err := exec.LookPath(tool)
		if err != nil {
			t.Fatalf("the tests need %s: %v", tool, err)
		}
		if err := os.Symlink(path, filepath.Join(f.tools, tool)); err != nil {
			t.Fatal(err)
		}
	}
	if m.procVersion != "" {
		f.file("proc/version", m.procVersion+"\n")
		f.file("proc/1/environ", m.initEnviron)
		f.file("proc/1/comm", m.initComm+"\n")
	}
	if m.cluster {
		f.mark("cluster-up")
	}
	if m.metricsAPI {
		f.mark("metrics-api")
	}
	if m.ingressClass {
		f.mark("ingressclass")
	}

	f.stub("uname", fmt.Sprintf(`case "$1" in -s) echo %s ;; -m) echo %s ;; -n) echo testhost ;; *) echo %s ;; esac`, m.kernel, m.arch, m.kernel))
	f.stub("sudo", `exec "$@"`)
	f.stub("sleep", `:`)
	f.stub("curl", curlStub)
	switch m.virt {
	case "":
	case "none":
		f.stub("systemd-detect-virt", `echo none; exit 1`)
	default:
		f.stub("systemd-detect-virt", `echo `+m.virt)
	}
	switch m.docker {
	case "up":
		f.stub("docker", `[ "$1" = info ] && exit 0; exit 0`)
	case "down":
		f.stub("docker", `echo "Cannot connect to the Docker daemon" >&2; exit 1`)
	}
	for _, tool := range m.tools {
		body, ok := toolStubs[tool]
		if !ok {
			t.Fatalf("no stub for %s", tool)
		}
		f.stub(tool, body)
	}
	return f
}

func (f *fakeMachine) file(rel, content string) {
	f.t.Helper()
	p := filepath.Join(f.root, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		f.t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fakeMachine) mark(name string) {
	f.t.Helper()
	if err := os.WriteFile(filepath.Join(f.state, name), nil, 0o644); err != nil {
		f.t.Fatal(err)
	}
}

// stub writes a program that logs its call and runs body. Stubs use only
// shell builtins and the real tools above.
func (f *fakeMachine) stub(name, body string) {
	f.t.Helper()
	bash, err := exec.LookPath("bash")
	if err != nil {
		f.t.Fatal(err)
	}
	script := fmt.Sprintf("#!%s\nprintf '%%s\\n' \"%s $*\" >>\"$STUB_LOG\"\n%s\n", bash, name, body)
	if err := os.WriteFile(filepath.Join(f.stubs, name), []byte(script), 0o755); err != nil {
		f.t.Fatal(err)
	}
}

// run runs deploy/install.sh with args on the machine.
func (f *fakeMachine) run(args ...string) run {
	f.t.Helper()
	return f.runWith(nil, args...)
}

func (f *fakeMachine) runWith(extraEnv []string, args ...string) run {
	f.t.Helper()
	if err := os.WriteFile(f.log, nil, 0o644); err != nil {
		f.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(f.tools, "bash"), append([]string{scriptPath(f.t)}, args...)...)
	cmd.Dir = testenv.Root(f.t)
	cmd.Env = append([]string{
		"PATH=" + f.stubs + ":" + f.tools,
		"HOME=" + f.home,
		"TMPDIR=" + f.tmp,
		"INSTALL_ROOT=" + f.root,
		"PIPEOPS_BIN_DIR=" + f.binDir,
		"STUB_LOG=" + f.log,
		"STUB_STATE=" + f.state,
		"STUB_DIR=" + f.stubs,
		"STUB_CONTEXT=" + f.m.context,
	}, append(f.m.env, extraEnv...)...)
	// A session of its own: no controlling terminal to ask on.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := run{stdout: stdout.String(), stderr: stderr.String()}
	var exit *exec.ExitError
	switch {
	case ctx.Err() != nil:
		f.t.Fatalf("install.sh %s: still running after 30s\n%s%s", strings.Join(args, " "), r.stdout, r.stderr)
	case errors.As(err, &exit):
		r.code = exit.ExitCode()
	case err != nil:
		f.t.Fatal(err)
	}
	log, err := os.ReadFile(f.log)
	if err != nil {
		f.t.Fatal(err)
	}
	if s := strings.TrimRight(string(log), "\n"); s != "" {
		r.calls = strings.Split(s, "\n")
	}
	if strings.Contains(r.stderr, "command not found") {
		f.t.Errorf("install.sh ran a program that is neither a stub nor in realTools:\n%s", r.stderr)
	}
	return r
}

// state lists the state directory (what the stubs recorded as installed).
func (f *fakeMachine) installed() []string {
	entries, err := os.ReadDir(f.state)
	if err != nil {
		f.t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	return names
}

func (f *fakeMachine) readState(name string) string {
	f.t.Helper()
	data, err := os.ReadFile(filepath.Join(f.state, name))
	if err != nil {
		f.t.Fatalf("%s: %v", name, err)
	}
	return string(data)
}

// scriptPath is relative to the module root, as a user in a checkout would
// run it; the script then finds the chart next to it.
func scriptPath(t *testing.T) string { return "deploy/install.sh" }

// curlStub writes canned downloads to -o; the k3s installer it serves
// records the flags, makes a kubeconfig and a k3s program, and "starts" the
// cluster. Any URL without a canned answer fails, like a network error.
const curlStub = `out=""; url=""
while [ $# -gt 0 ]; do
	case "$1" in
	-o) out="$2"; shift ;;
	-*) ;;
	*) url="$1" ;;
	esac
	shift
done
case "$url" in
https://get.k3s.io)
	cat >"$out" <<'INSTALLER'
printf '%s\n' "k3s-installer INSTALL_K3S_EXEC=$INSTALL_K3S_EXEC" >>"$STUB_LOG"
mkdir -p "$INSTALL_ROOT/etc/rancher/k3s"
printf 'apiVersion: v1\nkind: Config\n' >"$INSTALL_ROOT/etc/rancher/k3s/k3s.yaml"
printf '#!/bin/sh\nprintf "%%s\\n" "k3s $*" >>"$STUB_LOG"\nprintf "apiVersion: v1\\nkind: Config\\n"\n' >"$STUB_DIR/k3s"
chmod 755 "$STUB_DIR/k3s"
: >"$STUB_STATE/cluster-up"
INSTALLER
	;;
*)
	echo "curl: (6) no canned answer for $url" >&2
	exit 6
	;;
esac`

// toolStubs are the programs a machine may have. Their answers depend on
// the state directory, which the "installing" calls write to.
var toolStubs = map[string]string{
	"kubectl": `case "$*" in
"config current-context") [ -n "$STUB_CONTEXT" ] && echo "$STUB_CONTEXT" && exit 0; exit 1 ;;
cluster-info*|"get --raw=/readyz") [ -e "$STUB_STATE/cluster-up" ] && exit 0; echo "The connection to the server was refused" >&2; exit 1 ;;
"get apiservice v1beta1.metrics.k8s.io") [ -e "$STUB_STATE/metrics-api" ] && exit 0; exit 1 ;;
"get crd verticalpodautoscalers.autoscaling.k8s.io") [ -e "$STUB_STATE/vpa-crd" ] && exit 0; exit 1 ;;
"get ingressclass -o name") [ -e "$STUB_STATE/ingressclass" ] && echo ingressclass.networking.k8s.io/nginx; exit 0 ;;
*"rollout status"*) exit 0 ;;
*) echo "kubectl stub: unexpected call: $*" >&2; exit 1 ;;
esac`,
	"helm": `case "$1" in
version) echo v3.19.0 ;;
status) [ -e "$STUB_STATE/release-$2" ] && exit 0; echo "Error: release: not found" >&2; exit 1 ;;
repo) exit 0 ;;
upgrade)
	rel="$3"
	: >"$STUB_STATE/release-$rel"
	case "$rel" in
	metrics-server) : >"$STUB_STATE/metrics-api" ;;
	vpa) : >"$STUB_STATE/vpa-crd" ;;
	ingress-nginx) : >"$STUB_STATE/ingressclass" ;;
	esac
	while [ $# -gt 0 ]; do
		if [ "$1" = --values ]; then cat "$2" >"$STUB_STATE/values-$rel.yaml"; fi
		shift
	done ;;
*) echo "helm stub: unexpected call: $*" >&2; exit 1 ;;
esac`,
	"k3d": `case "$1 $2" in
"cluster get") [ -e "$STUB_STATE/k3d-$3" ] && exit 0; exit 1 ;;
"cluster create") : >"$STUB_STATE/k3d-$3"; : >"$STUB_STATE/cluster-up" ;;
"cluster start") : >"$STUB_STATE/cluster-up" ;;
"kubeconfig merge") exit 0 ;;
*) echo "k3d stub: unexpected call: $*" >&2; exit 1 ;;
esac`,
	"kind": `case "$1 $2" in
"get clusters") [ -e "$STUB_STATE/kind-pipeops" ] && echo pipeops; exit 0 ;;
"create cluster") : >"$STUB_STATE/kind-pipeops"; : >"$STUB_STATE/cluster-up" ;;
"export kubeconfig") exit 0 ;;
*) echo "kind stub: unexpected call: $*" >&2; exit 1 ;;
esac`,
	"minikube": `case "$1" in
status) [ -e "$STUB_STATE/minikube-pipeops" ] && exit 0; exit 7 ;;
start) : >"$STUB_STATE/minikube-pipeops"; : >"$STUB_STATE/cluster-up" ;;
update-context) exit 0 ;;
*) echo "minikube stub: unexpected call: $*" >&2; exit 1 ;;
esac`,
	"brew":      `exit 0`,
	"systemctl": `: >"$STUB_STATE/cluster-up"`,
}
