package compose

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/pipeops/tunnel/shared/testenv"
)

// TestHealthcheckCommands runs each compose healthcheck command with the real
// binary and the service's environment, against a stand-in for the endpoint:
// a 2xx answer must exit 0 within the healthcheck's timeout, a 503 or no
// server at all must not. The service's environment points at hosts of the
// compose network that do not resolve here, which also proves the check
// needs neither the database nor the control plane.
func TestHealthcheckCommands(t *testing.T) {
	p := stack(t)
	root := testenv.Root(t)

	bins := t.TempDir()
	build := exec.Command("go", "build", "-o", bins+"/",
		"./agent/cmd/pipeops-agent", "./gateway/cmd/pipeops-gateway", "./controlplane/cmd/pipeops-controlplane")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}

	for name, bin := range binaries {
		t.Run(name, func(t *testing.T) {
			s := service(t, p, name)
			hc := s.HealthCheck
			if hc == nil || len(hc.Test) != 4 || hc.Test[2] != "healthcheck" {
				t.Fatalf("healthcheck %v: want [CMD, binary, healthcheck, URL]", hc)
			}
			want, err := url.Parse(hc.Test[3])
			if err != nil {
				t.Fatal(err)
			}
			timeout := 30 * time.Second
			if hc.Timeout != nil {
				timeout = time.Duration(*hc.Timeout)
			}
			var env []string
			for k, v := range s.Environment {
				if v != nil {
					env = append(env, k+"="+*v)
				}
			}

			for _, tc := range []struct {
				status int
				ok     bool
			}{{http.StatusOK, true}, {http.StatusServiceUnavailable, false}, {0, false}} {
				srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					if r.URL.Path != want.Path {
						http.NotFound(w, r)
						return
					}
					w.WriteHeader(tc.status)
				}))
				target := *want
				target.Host = srv.Listener.Addr().String()
				if tc.status == 0 {
					srv.Close() // nothing listens there any more
				}
				ctx, cancel := context.WithTimeout(context.Background(), timeout)
				cmd := exec.CommandContext(ctx, filepath.Join(bins, bin), "healthcheck", target.String())
				cmd.Env = env
				var out bytes.Buffer
				cmd.Stdout, cmd.Stderr = &out, &out
				start := time.Now()
				err := cmd.Run()
				timedOut := ctx.Err() != nil
				cancel()
				srv.Close()
				var exit *exec.ExitError
				switch {
				case timedOut:
					t.Errorf("status %d: %s healthcheck still running after the healthcheck timeout %s\n%s", tc.status, bin, timeout, out.String())
				case tc.ok && err != nil:
					t.Errorf("status %d: %s healthcheck failed: %v\n%s", tc.status, bin, err, out.String())
				case !tc.ok && err == nil:
					t.Errorf("status %d: %s healthcheck exited 0\n%s", tc.status, bin, out.String())
				case !tc.ok && !errors.As(err, &exit):
					t.Errorf("status %d: %s healthcheck: %v", tc.status, bin, err)
				default:
					t.Logf("status %d: exit %v in %s", tc.status, err, time.Since(start).Round(time.Millisecond))
				}
			}
		})
	}
}
