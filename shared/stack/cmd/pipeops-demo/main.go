// Command pipeops-demo runs the whole platform on this machine (`make
// demo`): PostgreSQL, the control plane, the gateway, a Kubernetes API
// server as the demo cluster with an ingress controller stand-in, and the
// agent. It shows a request in tunnel mode, the same request in direct mode
// once the ingress controller has a load balancer address, and kubectl
// reaching the cluster through the gateway; then it stays up until Ctrl-C
// and tears everything down. With -check it exits after the checks: 0 only
// if all passed (`make demo-check`).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/pipeops/tunnel/shared/stack"
)

const host = "hello.demo.test"

func main() {
	binDir := flag.String("bin", "bin", "directory holding the built pipeops-* binaries (make build)")
	check := flag.Bool("check", false, "run the checks and exit: 0 only if all passed")
	keep := flag.Bool("keep", false, "keep the work directory (logs, kubeconfigs) after exit")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	code := run(ctx, *binDir, *check, *keep)
	os.Exit(code)
}

func run(ctx context.Context, binDir string, checkOnly, keep bool) int {
	dir, err := os.MkdirTemp("", "pipeops-demo-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer func() {
		if keep {
			fmt.Printf("\nwork directory kept: %s\n", dir)
		} else {
			os.RemoveAll(dir)
		}
	}()
	bin, err := filepath.Abs(binDir)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}

	fmt.Println("== starting the stack (everything on 127.0.0.1)")
	s, err := stack.Start(ctx, stack.Options{Dir: dir, BinDir: bin, DatabaseURL: os.Getenv("DATABASE_URL"), Progress: os.Stdout})
	if err != nil {
		fmt.Fprintf(os.Stderr, "demo: %v\n", err)
		return 1
	}
	defer func() {
		fmt.Println("\n== tearing down")
		s.Close()
		fmt.Println("stopped every process")
	}()
	c, err := s.AddCluster(ctx, stack.ClusterOptions{Name: "demo"})
	if err != nil {
		fmt.Fprintf(os.Stderr, "demo: %v\nlogs: %s\n", err, filepath.Join(dir, "logs"))
		return 1
	}
	c.Ingress.Handle(host, stack.App("the demo cluster"))
	if _, err := c.CreateIngress(ctx, "demo", "hello", host); err != nil {
		fmt.Fprintf(os.Stderr, "demo: create the Ingress: %v\n", err)
		return 1
	}
	fmt.Printf("created Ingress demo/hello for %s with label pipeops.io/managed=true\n", host)

	d := &demo{s: s, c: c}
	results := []bool{
		d.step("1. a request through the gateway in TUNNEL mode (gateway -> yamux stream -> agent -> ingress controller)", d.tunnelMode),
		d.step("2. the ingress controller Service gets a LoadBalancer address: the same request in DIRECT mode (gateway -> load balancer)", d.directMode),
		d.step("3. kubectl lists the demo cluster's namespaces through the gateway, with a user token", d.kubectl),
	}
	passed := 0
	for _, ok := range results {
		if ok {
			passed++
		}
	}
	fmt.Printf("\n== %d of %d checks passed\n", passed, len(results))
	if checkOnly {
		if passed != len(results) {
			fmt.Printf("logs: %s (run with -keep to keep them)\n", filepath.Join(dir, "logs"))
			return 1
		}
		return 0
	}

	// Back to tunnel mode, so requests tried by hand go through the tunnel.
	if err := c.SetLoadBalancer(ctx, false); err == nil {
		fmt.Println("(the LoadBalancer address is withdrawn again: routes are back in tunnel mode)")
	}
	// A sign-in for the console. The stack lives on loopback and dies with
	// the demo, so its token may be shown; it lasts 12 h at most.
	signin, _, err := s.Token(ctx, "admin", 12*time.Hour)
	if err != nil {
		fmt.Fprintf(os.Stderr, "demo: an admin token for the console: %v\n", err)
		return 1
	}
	fmt.Printf(`
== the stack is up; try it by hand (Ctrl-C stops everything)

  web console         %[11]s/console/
  its sign-in token   %[12]s

  curl -H 'Host: %[1]s' %[2]s/
  curl -H 'Host: %[1]s' '%[2]s/bytes?n=100000000' -o /dev/null -w '%%{speed_download} bytes/s\n'
  kubectl --kubeconfig %[3]s get ns
  kubectl --kubeconfig %[3]s auth whoami        # the agent's ServiceAccount, not yours
  kubectl --kubeconfig %[4]s get ingress -A     # the demo cluster directly, as its admin
  (set -a; . %[5]s; %[6]s cluster list)    # the env file holds the database password and the KEK's path
  (set -a; . %[5]s; %[6]s keys list)

  agent status page   %[7]s/
  gateway metrics     %[8]s/metrics
  control plane       %[9]s/readyz
  logs                %[10]s
`, host, s.GatewayHTTP, c.Kubeconfig, c.Kube.Kubeconfig, s.EnvFile, filepath.Join(bin, "pipeops-controlplane"),
		c.AgentURL, s.GatewayAdmin, s.ControlPlaneURL, filepath.Join(dir, "logs"), s.ControlPlaneURL, signin)
	<-ctx.Done()
	return 0
}

type demo struct {
	s *stack.Stack
	c *stack.Cluster
}

func (d *demo) step(title string, f func() error) bool {
	fmt.Printf("\n== %s\n", title)
	if err := f(); err != nil {
		fmt.Printf("FAILED: %v\n", err)
		return false
	}
	fmt.Println("ok")
	return true
}

// served waits until a request in mode answers from the demo app, and
// prints it.
func (d *demo) served(mode string) error {
	deadline := time.Now().Add(20 * time.Second)
	before, err := d.proxied(mode)
	if err != nil {
		return err
	}
	var last string
	for time.Now().Before(deadline) {
		code, body, err := d.get()
		if err == nil && code == 200 && strings.Contains(body, "hello from") {
			after, err := d.proxied(mode)
			if err != nil {
				return err
			}
			if after > before {
				fmt.Printf("$ curl -H 'Host: %s' %s/\n%s", host, d.s.GatewayHTTP, body)
				fmt.Printf("(the gateway's metrics count it as a %s-mode request)\n", mode)
				return nil
			}
			last = "answered, but not in " + mode + " mode yet"
		} else {
			last = fmt.Sprintf("%d %q %v", code, strings.TrimSpace(body), err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("no %s-mode answer within 20s (last: %s)", mode, last)
}

func (d *demo) get() (int, string, error) {
	req, err := http.NewRequest(http.MethodGet, d.s.GatewayHTTP+"/", nil)
	if err != nil {
		return 0, "", err
	}
	req.Host = host
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// proxied is the gateway's count of proxied requests in mode.
func (d *demo) proxied(mode string) (float64, error) {
	return d.s.GatewayMetric(context.Background(), "pipeops_gateway_proxy_requests_total", `mode="`+mode+`"`)
}

func (d *demo) tunnelMode() error { return d.served("tunnel") }

func (d *demo) directMode() error {
	if err := d.c.SetLoadBalancer(context.Background(), true); err != nil {
		return err
	}
	fmt.Printf("Service %s/%s: type LoadBalancer, status.loadBalancer.ingress[0].ip %s\n", stack.IngressNamespace, stack.IngressService, d.c.Ingress.Host)
	return d.served("direct")
}

func (d *demo) kubectl() error {
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		return errors.New("kubectl is not installed (make testenv builds it into .testenv/bin)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, kubectl, "--kubeconfig", d.c.Kubeconfig, "get", "ns").CombinedOutput()
	fmt.Printf("$ kubectl --kubeconfig %s get ns\n%s", d.c.Kubeconfig, out)
	if err != nil {
		return fmt.Errorf("kubectl: %w", err)
	}
	if !strings.Contains(string(out), "default") || !strings.Contains(string(out), "demo") {
		return errors.New("the namespaces of the demo cluster are not listed")
	}
	return nil
}
