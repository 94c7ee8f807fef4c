package load

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"slices"
	"sync"
	"time"

	"github.com/pipeops/tunnel/loadtest/internal/child"
)

// The load generator runs in a worker process of its own, as a separate
// client machine would: the upstream then is in another process than its
// client on every path, the direct baseline included, and the client's
// sockets do not count against the open-file limit of the process that
// serves the upstream. The worker reads one Job per line on stdin and
// answers each with one Reply line on stdout.

// Operations of a Job.
const (
	OpClosed       = "closed"        // Closed, after Warmup
	OpOpen         = "open"          // Open, after Warmup
	OpParallel     = "parallel"      // Parallel
	OpSocketsOpen  = "sockets_open"  // OpenSockets; the worker holds them
	OpSocketsEcho  = "sockets_echo"  // Echo on the held sockets
	OpSocketsClose = "sockets_close" // close the held sockets
	OpReset        = "reset"         // close every connection the worker keeps
	OpPing         = "ping"          // answer at once (to time a round trip between processes)
)

// Job is one command for a worker.
type Job struct {
	Op   string `json:"op"`
	URL  string `json:"url,omitempty"`
	Host string `json:"host,omitempty"`
	// Want is the payload size every answer must have (-1: any).
	Want int64 `json:"want"`
	// Conns is the number of workers, connections, parallel downloads or
	// sockets' handshake concurrency.
	Conns     int  `json:"conns"`
	KeepAlive bool `json:"keep_alive"`
	// Warmup runs the same requests closed-loop first, unrecorded. The
	// worker keeps its connections from one job to the next with the same
	// URL, Host, Conns and KeepAlive, so a run split into several jobs
	// warms up once.
	Warmup      time.Duration `json:"warmup"`
	Duration    time.Duration `json:"duration"`
	MaxRequests int64         `json:"max_requests"`
	Rate        float64       `json:"rate,omitempty"`
	Drain       time.Duration `json:"drain,omitempty"`
	BufSize     int           `json:"buf_size"`
	// Sockets is how many WebSockets to open; Timeout bounds each echo.
	Sockets int           `json:"sockets,omitempty"`
	Timeout time.Duration `json:"timeout,omitempty"`
}

// Reply answers a Job.
type Reply struct {
	Result *Result `json:"result,omitempty"`
	// Held is the number of sockets the worker holds after the job.
	Held  int    `json:"held"`
	Error string `json:"error,omitempty"`
}

// Serve is the worker: it runs the jobs read from in, one at a time, until
// in ends or ctx does.
func Serve(ctx context.Context, in io.Reader, out io.Writer) error {
	dec := json.NewDecoder(bufio.NewReader(in))
	enc := json.NewEncoder(out)
	var held *Sockets
	clients := clientCache{}
	defer func() {
		if held != nil {
			held.Close()
		}
		clients.reset()
	}()
	for ctx.Err() == nil {
		var job Job
		if err := dec.Decode(&job); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("read job: %w", err)
		}
		var rep Reply
		switch job.Op {
		case OpClosed, OpOpen, OpParallel:
			rep.Result = runRequests(ctx, clients.get(job), job)
		case OpReset:
			clients.reset()
		case OpPing:
		case OpSocketsOpen:
			if held != nil {
				held.Close()
			}
			held, rep.Result = OpenSockets(ctx, job.URL, job.Host, job.Sockets, job.Conns)
		case OpSocketsEcho:
			if held == nil {
				rep.Error = "no sockets held"
				break
			}
			rep.Result = held.Echo(ctx, job.Conns, job.Timeout)
		case OpSocketsClose:
			if held != nil {
				held.Close()
				held = nil
			}
		default:
			rep.Error = fmt.Sprintf("unknown op %q", job.Op)
		}
		if held != nil {
			rep.Held = held.Len()
		}
		if err := enc.Encode(&rep); err != nil {
			return fmt.Errorf("write reply: %w", err)
		}
	}
	return ctx.Err()
}

// clientCache keeps a client per kind of job, and with it its connections.
type clientCache map[clientKey]*http.Client

type clientKey struct {
	url, host string
	conns     int
	keepAlive bool
}

func (c clientCache) get(job Job) *http.Client {
	k := clientKey{job.URL, job.Host, job.Conns, job.KeepAlive}
	if cl, ok := c[k]; ok {
		return cl
	}
	cl := NewClient(job.Conns, job.KeepAlive)
	c[k] = cl
	return cl
}

func (c clientCache) reset() {
	for k, cl := range c {
		cl.CloseIdleConnections()
		delete(c, k)
	}
}

func runRequests(ctx context.Context, c *http.Client, job Job) *Result {
	req := Get(c, job.URL, job.Host, job.Want)
	if job.Warmup > 0 {
		Closed(ctx, min(job.Conns, 32), job.Warmup, 1<<40, job.BufSize, req)
	}
	switch job.Op {
	case OpOpen:
		return Open(ctx, job.Rate, job.Duration, job.Conns, job.Drain, job.BufSize, req)
	case OpParallel:
		return Parallel(ctx, job.Conns, job.BufSize, req)
	default:
		return Closed(ctx, job.Conns, job.Duration, job.MaxRequests, job.BufSize, req)
	}
}

// Remote is a worker process. Its methods are safe for concurrent use but
// run one job at a time.
type Remote struct {
	cmd  *exec.Cmd
	in   io.WriteCloser
	enc  *json.Encoder
	dec  *json.Decoder
	mu   sync.Mutex
	done chan struct{}
	err  error // of Wait, once done is closed
}

// StartRemote starts a worker: name and args must run Serve on stdin and
// stdout. Its stderr goes to ours. The worker is killed if this process
// dies.
func StartRemote(name string, args ...string) (*Remote, error) {
	cmd, in, out, err := child.Start(name, args...)
	if err != nil {
		return nil, fmt.Errorf("start the load worker: %w", err)
	}
	r := &Remote{cmd: cmd, in: in, enc: json.NewEncoder(in), dec: json.NewDecoder(bufio.NewReader(out)), done: make(chan struct{})}
	go func() {
		r.err = cmd.Wait()
		close(r.done)
	}()
	return r, nil
}

// Pid is the worker's process id.
func (r *Remote) Pid() int { return r.cmd.Process.Pid }

// Do runs job in the worker. When ctx ends first, the worker is killed
// (its jobs are bounded in time, so this only happens on interrupt).
func (r *Remote) Do(ctx context.Context, job Job) (*Reply, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.enc.Encode(&job); err != nil {
		return nil, fmt.Errorf("send %s job to the worker: %w", job.Op, err)
	}
	type answer struct {
		rep Reply
		err error
	}
	ch := make(chan answer, 1)
	go func() {
		var a answer
		a.err = r.dec.Decode(&a.rep)
		ch <- a
	}()
	select {
	case a := <-ch:
		if a.err != nil {
			return nil, fmt.Errorf("read the worker's answer to %s: %w", job.Op, a.err)
		}
		if a.rep.Error != "" {
			return &a.rep, fmt.Errorf("worker: %s", a.rep.Error)
		}
		if a.rep.Result == nil && job.Op != OpSocketsClose && job.Op != OpReset && job.Op != OpPing {
			return &a.rep, fmt.Errorf("worker: no result for %s", job.Op)
		}
		return &a.rep, nil
	case <-ctx.Done():
		_ = r.cmd.Process.Kill()
		<-ch
		return nil, ctx.Err()
	}
}

// RoundTrip returns the median time of n pings to the worker: a message
// to another process and its answer, two wake-ups of a sleeping process.
// It is the floor under every hop between the platform's processes.
func (r *Remote) RoundTrip(ctx context.Context, n int) (time.Duration, error) {
	ds := make([]time.Duration, 0, n)
	for range n {
		t0 := time.Now()
		if _, err := r.Do(ctx, Job{Op: OpPing}); err != nil {
			return 0, err
		}
		ds = append(ds, time.Since(t0))
	}
	slices.Sort(ds)
	return ds[len(ds)/2], nil
}

// Close ends the worker: it finishes when its stdin closes, and is killed
// if it has not within 10 s.
func (r *Remote) Close() error {
	r.in.Close()
	select {
	case <-r.done:
	case <-time.After(10 * time.Second):
		_ = r.cmd.Process.Kill()
		<-r.done
	}
	var ee *exec.ExitError
	if errors.As(r.err, &ee) && !ee.Exited() {
		return nil // killed: already reported by Do
	}
	return r.err
}
