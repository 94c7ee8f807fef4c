// Package load generates traffic: closed-loop workers (each sends its next
// request when the last one is answered), an open-loop schedule (requests
// start at fixed times whether or not earlier ones are answered), bulk
// downloads, and many idle WebSockets. Every run is bounded both in time and
// in count, and records every request's latency in an hdr.Histogram.
package load

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pipeops/tunnel/loadtest/internal/hdr"
)

// Result is what one run on one path measured.
type Result struct {
	Hist         hdr.Histogram // successful requests only
	Requests     int64         // successful
	Errors       int64
	ErrorSamples []string
	Bytes        int64
	Elapsed      time.Duration
}

// Rate is successful requests per second.
func (r *Result) Rate() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Requests) / r.Elapsed.Seconds()
}

// MBps is payload megabytes (10^6) per second.
func (r *Result) MBps() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Bytes) / 1e6 / r.Elapsed.Seconds()
}

// Merge sums results of the same kind taken one after the other: counts,
// bytes, histograms and elapsed times add up, so Rate is over the time all
// of them ran.
func Merge(rs ...*Result) *Result {
	total := &Result{}
	for _, r := range rs {
		total.merge(r)
		total.Elapsed += r.Elapsed
	}
	return total
}

func (r *Result) merge(o *Result) {
	r.Hist.Merge(&o.Hist)
	r.Requests += o.Requests
	r.Errors += o.Errors
	r.Bytes += o.Bytes
	for _, e := range o.ErrorSamples {
		r.sample(e)
	}
}

func (r *Result) sample(e string) {
	if len(r.ErrorSamples) < 5 {
		r.ErrorSamples = append(r.ErrorSamples, e)
	}
}

// Request is one request of a run: it returns the payload bytes received.
// buf is the caller's scratch buffer, owned by one goroutine.
type Request func(ctx context.Context, buf []byte) (int64, error)

// NewClient returns a client for one path of one run: at most conns
// connections, kept alive between requests unless keepAlive is false (then
// every request opens a connection and closes it). No proxy from the
// environment: traffic stays on loopback.
func NewClient(conns int, keepAlive bool) *http.Client {
	return &http.Client{Transport: &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		MaxIdleConnsPerHost: conns,
		MaxConnsPerHost:     conns,
		DisableKeepAlives:   !keepAlive,
		DisableCompression:  true,
		ForceAttemptHTTP2:   false,
	}}
}

// Get returns a Request for GET url with Host host, which must answer 200
// with want payload bytes (any number when want < 0).
func Get(c *http.Client, url, host string, want int64) Request {
	return func(ctx context.Context, buf []byte) (int64, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return 0, err
		}
		req.Host = host
		resp, err := c.Do(req)
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		var n int64
		for {
			k, rerr := resp.Body.Read(buf)
			n += int64(k)
			if rerr == io.EOF {
				break
			}
			if rerr != nil {
				return n, fmt.Errorf("GET %s: body after %d bytes: %w", req.URL.Path, n, rerr)
			}
		}
		if resp.StatusCode != http.StatusOK {
			return n, fmt.Errorf("GET %s: %s", req.URL.Path, resp.Status)
		}
		if want >= 0 && n != want {
			return n, fmt.Errorf("GET %s: %d bytes, want %d", req.URL.Path, n, want)
		}
		return n, nil
	}
}

// Closed runs workers closed-loop until d has passed or maxRequests have
// been sent, whichever is first. Latency is each request's own time: in a
// closed loop a slow answer delays the worker's next request, so the
// percentiles describe service time, not what a visitor arriving at random
// would see (Open measures that).
func Closed(ctx context.Context, workers int, d time.Duration, maxRequests int64, bufSize int, req Request) *Result {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var sent atomic.Int64
	return fanOut(workers, func(r *Result) {
		buf := make([]byte, bufSize)
		for ctx.Err() == nil && sent.Add(1) <= maxRequests {
			t0 := time.Now()
			n, err := req(ctx, buf)
			if err != nil {
				if ctx.Err() != nil {
					return // cut by the end of the run, not a failure
				}
				r.Errors++
				r.sample(err.Error())
				continue
			}
			r.Hist.Record(time.Since(t0))
			r.Requests++
			r.Bytes += n
		}
	})
}

// Open sends requests at a fixed rate for d, however long earlier ones
// take, from up to maxInFlight goroutines. Each latency is measured from the
// moment the schedule said the request should start, so time spent waiting
// for a free goroutine counts: a stall shows in the percentiles instead of
// silently thinning the load (no coordinated omission). Requests still
// unanswered drain after d has passed for at most drain, and those that
// could not be sent or answered by then are errors.
func Open(ctx context.Context, rate float64, d time.Duration, maxInFlight int, drain time.Duration, bufSize int, req Request) *Result {
	n := int64(rate * d.Seconds())
	interval := time.Duration(float64(time.Second) / rate)
	ctx, cancel := context.WithTimeout(ctx, d+drain)
	defer cancel()
	due := make(chan time.Time, min(n, 1<<16))
	// The schedule feeds the workers; it ends (closing due) before they do.
	start := time.Now()
	var unscheduled int64
	scheduled := make(chan struct{})
	go func() {
		defer close(scheduled)
		timer := time.NewTimer(0)
	schedule:
		for i := int64(0); i < n; i++ {
			at := start.Add(time.Duration(i) * interval)
			if wait := time.Until(at); wait > 0 {
				timer.Reset(wait)
				select {
				case <-ctx.Done():
					unscheduled = n - i
					break schedule
				case <-timer.C:
				}
			}
			select {
			case due <- at:
			case <-ctx.Done():
				unscheduled = n - i
				break schedule
			}
		}
		timer.Stop()
		close(due)
	}()
	total := fanOut(maxInFlight, func(r *Result) {
		buf := make([]byte, bufSize)
		for at := range due {
			if ctx.Err() != nil {
				r.Errors++
				r.sample("not sent before the end of the run: the schedule fell behind")
				continue
			}
			k, err := req(ctx, buf)
			if err != nil {
				r.Errors++
				r.sample(err.Error())
				continue
			}
			r.Hist.Record(time.Since(at))
			r.Requests++
			r.Bytes += k
		}
	})
	<-scheduled
	if unscheduled > 0 {
		total.Errors += unscheduled
		total.sample(strconv.FormatInt(unscheduled, 10) + " requests never scheduled before the end of the run")
	}
	return total
}

// Parallel runs req once in each of n goroutines at the same time and
// reports the aggregate: bytes over the wall time of the slowest.
func Parallel(ctx context.Context, n, bufSize int, req Request) *Result {
	return fanOut(n, func(r *Result) {
		buf := make([]byte, bufSize)
		t0 := time.Now()
		k, err := req(ctx, buf)
		r.Bytes = k
		if err != nil {
			r.Errors++
			r.sample(err.Error())
			return
		}
		r.Requests++
		r.Hist.Record(time.Since(t0))
	})
}

// fanOut runs work on n goroutines, each recording into a Result of its own
// (nothing shared on the hot path), and merges them once all have returned;
// Elapsed is the wall time of the whole.
func fanOut(n int, work func(r *Result)) *Result {
	results := make([]*Result, n)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range n {
		r := &Result{}
		results[i] = r
		wg.Add(1)
		go func() {
			defer wg.Done()
			work(r)
		}()
	}
	wg.Wait()
	total := &Result{Elapsed: time.Since(start)}
	for _, r := range results {
		total.merge(r)
	}
	return total
}
