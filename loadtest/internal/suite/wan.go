package suite

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/pipeops/tunnel/loadtest/internal/hdr"
	"github.com/pipeops/tunnel/loadtest/internal/report"
	"github.com/pipeops/tunnel/shared/stack"
	"github.com/pipeops/tunnel/shared/testenv/netbed"
)

// wanHost is the wan scenario's route.
const wanHost = "wan.load.test"

// wanPaths are the wan scenario's two paths between the same two hosts:
// through the tunnel, and a plain TCP connection over the same link.
const (
	wanTunnel = "tunnel"
	wanPlain  = "plain"
)

// wanEnv is the wan scenario's own stack: the control plane and the gateway
// on host "server", the cluster's agent on host "cluster", one emulated
// link between them whose profile changes from one part to the next. The
// visitor (this process's client) sits on the server host, next to the
// gateway, as a visitor near the gateway's region would; the plain path's
// client too, so both paths cross the link once.
type wanEnv struct {
	link    *netbed.Link
	cluster *stack.Cluster
	clients map[string]*http.Client
	base    map[string]string
}

// wan measures the tunnel over emulated links (shared/testenv/netbed)
// against plain TCP over the same link in the same run: downloads and
// uploads of one stream, eight streams at once, small requests' latency
// against the link's round trip, and small requests beside a bulk download
// (head-of-line blocking). The figures are details named by link profile.
func (e *Env) wan(ctx context.Context, s *report.Scenario) error {
	p := e.profile
	s.Unit, s.HigherIsBetter = "MB/s", true
	s.Description = fmt.Sprintf("tunnel vs plain TCP over emulated links (%s), %s windows, median of %d interleaved rounds",
		strings.Join(p.WANLinks, ", "), p.WANWindow, p.WANRounds)
	bed, err := netbed.Open()
	if err != nil {
		return fmt.Errorf("the wan scenario needs network namespaces: %w", err)
	}
	defer func() {
		if err := bed.Close(); err != nil {
			s.Fail("close the test bed: %v", err)
		}
	}()
	w, closeWAN, err := e.startWAN(ctx, bed)
	if err != nil {
		return err
	}
	defer closeWAN()

	for _, name := range p.WANLinks {
		prof, err := netbed.ProfileByName(name)
		if err != nil {
			return err
		}
		e.progress("  wan link %v", prof)
		if err := w.fresh(ctx, prof); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		if err := e.wanProfile(ctx, s, w, prof); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
	}
	// The headline is the first profile's single-stream download.
	first := p.WANLinks[0]
	if v, ok := s.Details[first+"_download_plain_mbps"]; ok {
		s.Set(report.Direct, v)
	}
	if v, ok := s.Details[first+"_download_tunnel_mbps"]; ok {
		s.Set(report.Tunnel, v)
	}
	return nil
}

// startWAN starts the wan scenario's stack on bed.
func (e *Env) startWAN(ctx context.Context, bed *netbed.Bed) (*wanEnv, func(), error) {
	cluster, server, link, err := bed.Pair("cluster", "server", netbed.LAN)
	if err != nil {
		return nil, nil, err
	}
	quiet := map[string]string{"LOG_LEVEL": "warn"}
	ws, err := stack.Start(ctx, stack.Options{Dir: filepath.Join(e.workDir, "wan"), BinDir: e.binDir, Server: server,
		ControlPlaneEnv: quiet, GatewayEnv: quiet})
	if err != nil {
		return nil, nil, fmt.Errorf("start the wan stack: %w", err)
	}
	var closers []func()
	closeAll := func() {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
	}
	closers = append(closers, ws.Close)
	wc, err := ws.AddCluster(ctx, stack.ClusterOptions{Name: "wan", Host: cluster, AgentEnv: quiet})
	if err != nil {
		closeAll()
		return nil, nil, fmt.Errorf("add the wan cluster: %w", err)
	}
	wc.Ingress.Handle(wanHost, stack.App("wan"))
	if _, err := wc.CreateIngress(ctx, "wan", "web", wanHost); err != nil {
		closeAll()
		return nil, nil, err
	}
	// The plain path: a listener at the cluster host's address, joined to
	// the same app as the agent reaches it (both through a forwarder).
	ln, err := cluster.Listen("tcp4", net.JoinHostPort(cluster.Addr.String(), "0"))
	if err != nil {
		closeAll()
		return nil, nil, err
	}
	var d net.Dialer
	fwd := netbed.Forward(ln, func(ctx context.Context) (net.Conn, error) { return d.DialContext(ctx, "tcp", wc.Ingress.Addr) })
	closers = append(closers, func() { _ = fwd.Close() })

	w := &wanEnv{link: link, cluster: wc, clients: map[string]*http.Client{}, base: map[string]string{
		wanTunnel: ws.InBed.GatewayHTTP,
		wanPlain:  "http://" + ln.Addr().String(),
	}}
	for path := range w.base {
		tr := &http.Transport{DialContext: server.DialContext, Proxy: nil, MaxIdleConnsPerHost: 64, DisableCompression: true}
		w.clients[path] = &http.Client{Transport: tr}
		closers = append(closers, tr.CloseIdleConnections)
	}
	if err := w.waitServed(ctx, 60*time.Second); err != nil {
		closeAll()
		return nil, nil, err
	}
	return w, closeAll, nil
}

// waitServed waits until the route is served through the tunnel.
func (w *wanEnv) waitServed(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		_, err := w.get(ctx, wanTunnel, "/")
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the wan route was not served within %v: %w", timeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// fresh sets the link's profile and starts every connection afresh over
// it: the agent's tunnel and the clients' idle connections. A TCP
// connection whose round trip jumps a hundredfold under it keeps sizing its
// receive window by the old one (Linux's receive-buffer autotuning keeps
// the smallest round trip it measured) and crawls for seconds, which no
// real link does to a connection.
func (w *wanEnv) fresh(ctx context.Context, prof netbed.Profile) error {
	if err := w.link.SetProfile(prof); err != nil {
		return err
	}
	for _, c := range w.clients {
		c.CloseIdleConnections()
	}
	if err := w.cluster.Agent.Restart(10 * time.Second); err != nil {
		return fmt.Errorf("restart the agent: %w", err)
	}
	return w.waitServed(ctx, 30*time.Second)
}

func (w *wanEnv) request(ctx context.Context, path, method, uri string, body io.Reader) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, w.base[path]+uri, body)
	if err != nil {
		return nil, err
	}
	req.Host = wanHost
	resp, err := w.clients[path].Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		resp.Body.Close()
		return nil, fmt.Errorf("%s %s on the %s path: %s %q", method, uri, path, resp.Status, strings.TrimSpace(string(b)))
	}
	return resp, nil
}

// get does a small request and returns its time.
func (w *wanEnv) get(ctx context.Context, path, uri string) (time.Duration, error) {
	start := time.Now()
	resp, err := w.request(ctx, path, http.MethodGet, uri, nil)
	if err != nil {
		return 0, err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return time.Since(start), err
}

// errNoAnswer is a download whose answer did not come within its window.
var errNoAnswer = errors.New("no answer within the window")

// download reads an endless download for d and returns bytes per second,
// the connection's set-up included (as a visitor sees it).
func (w *wanEnv) download(ctx context.Context, path string, d time.Duration) (float64, error) {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	start := time.Now()
	resp, err := w.request(ctx, path, http.MethodGet, "/bytes?n="+strconv.FormatInt(1<<40, 10), nil)
	if err != nil && errors.Is(err, context.DeadlineExceeded) {
		// No answer within the window: on a bad enough link that is the
		// throughput a visitor saw, not a failure.
		return 0, errNoAnswer
	}
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	n, err := io.CopyBuffer(io.Discard, resp.Body, make([]byte, 256<<10))
	if err != nil && !errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
		return 0, err
	}
	return float64(n) / time.Since(start).Seconds(), nil
}

// maxUpload keeps an upload under the gateway's request body limit (1 GiB
// by default), which a fast link reaches within a window.
const maxUpload = 768 << 20

// timedBody is an upload body that ends d after its first read, or at
// maxUpload bytes.
type timedBody struct {
	d     time.Duration
	end   time.Time
	chunk []byte
	n     int64
}

func (b *timedBody) Read(p []byte) (int, error) {
	if b.end.IsZero() {
		b.end = time.Now().Add(b.d)
	}
	if time.Now().After(b.end) || b.n >= maxUpload {
		return 0, io.EOF
	}
	n := copy(p, b.chunk[:min(len(b.chunk), int(maxUpload-b.n))])
	b.n += int64(n)
	return n, nil
}

// upload sends for d and returns bytes per second, until the answer.
func (w *wanEnv) upload(ctx context.Context, path string, d time.Duration) (float64, error) {
	body := &timedBody{d: d, chunk: make([]byte, 256<<10)}
	start := time.Now()
	resp, err := w.request(ctx, path, http.MethodPost, "/upload", body)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	answer, err := io.ReadAll(io.LimitReader(resp.Body, 256))
	if err != nil {
		return 0, err
	}
	if got := strings.Fields(string(answer)); len(got) == 0 || got[0] != strconv.FormatInt(body.n, 10) {
		return 0, fmt.Errorf("upload on the %s path: the app read %q, %d bytes were sent", path, strings.TrimSpace(string(answer)), body.n)
	}
	return float64(body.n) / time.Since(start).Seconds(), nil
}

// parallel runs n downloads at once for d and returns their sum.
func (w *wanEnv) parallel(ctx context.Context, path string, n int, d time.Duration) (float64, error) {
	var wg sync.WaitGroup
	rates := make([]float64, n)
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rates[i], errs[i] = w.download(ctx, path, d)
			if errors.Is(errs[i], errNoAnswer) {
				errs[i] = nil // it moved nothing: 0 in the sum
			}
		}()
	}
	wg.Wait()
	sum := 0.0
	for _, r := range rates {
		sum += r
	}
	return sum, errors.Join(errs...)
}

// small sends small requests from conns connections, each one after the
// other, for d, and returns their latencies and the failures.
func (w *wanEnv) small(ctx context.Context, path string, conns int, d time.Duration) (*hdr.Histogram, int64, string) {
	var mu sync.Mutex
	h := &hdr.Histogram{}
	var failed int64
	var sample string
	end := time.Now().Add(d)
	var wg sync.WaitGroup
	for range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			mine := &hdr.Histogram{}
			var bad int64
			var last string
			for time.Now().Before(end) && ctx.Err() == nil {
				took, err := w.get(ctx, path, "/")
				if err != nil {
					bad++
					last = err.Error()
					time.Sleep(10 * time.Millisecond)
					continue
				}
				mine.Record(took)
			}
			mu.Lock()
			h.Merge(mine)
			failed += bad
			if last != "" {
				sample = last
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	return h, failed, sample
}

// wanProfile measures one link profile.
func (e *Env) wanProfile(ctx context.Context, s *report.Scenario, w *wanEnv, prof netbed.Profile) error {
	p := e.profile
	name := prof.Name
	paths := []string{wanTunnel, wanPlain}
	// Interleaved rounds, the order turning each round, so a burst from
	// elsewhere on the machine lands on both paths alike.
	measure := func(figure string, fn func(path string) (float64, error)) error {
		got := map[string][]float64{}
		for round := range p.WANRounds {
			for i := range paths {
				path := paths[(i+round)%len(paths)]
				v, err := fn(path)
				if errors.Is(err, errNoAnswer) {
					s.Note("%s %s on the %s path: no answer within %v; counted as 0", name, figure, path, p.WANWindow)
					err = nil
				}
				if err != nil {
					s.AddErrors(1, err.Error())
					continue
				}
				got[path] = append(got[path], v/1e6)
			}
		}
		if len(got[wanTunnel]) == 0 || len(got[wanPlain]) == 0 {
			return fmt.Errorf("%s: no round completed on both paths", figure)
		}
		tun, plain := median(got[wanTunnel]), median(got[wanPlain])
		s.Detail(name+"_"+figure+"_tunnel_mbps", round1(tun))
		s.Detail(name+"_"+figure+"_plain_mbps", round1(plain))
		if plain > 0 {
			s.Detail(name+"_"+figure+"_ratio", round3(tun/plain))
		}
		e.progress("    %-9s %-10s tunnel %s MB/s, plain TCP %s MB/s (rounds: %s | %s)", name, figure,
			report.Num(tun), report.Num(plain), nums(got[wanTunnel]), nums(got[wanPlain]))
		return nil
	}
	win := p.WANWindow
	if err := measure("download", func(path string) (float64, error) { return w.download(ctx, path, win) }); err != nil {
		return err
	}
	if err := measure("upload", func(path string) (float64, error) { return w.upload(ctx, path, win) }); err != nil {
		return err
	}
	if err := measure("parallel8", func(path string) (float64, error) { return w.parallel(ctx, path, 8, win) }); err != nil {
		return err
	}

	// Small requests, one connection: what the tunnel adds to a request,
	// in round trips of the link.
	lat := map[string]*hdr.Histogram{}
	for _, path := range paths {
		h, failed, sample := w.small(ctx, path, 1, win)
		if failed > 0 {
			s.AddErrors(failed, sample)
		}
		lat[path] = h
	}
	tp50, pp50 := lat[wanTunnel].Quantile(0.5), lat[wanPlain].Quantile(0.5)
	added := tp50 - pp50
	s.Detail(name+"_small_p50_ms_tunnel", msOf(tp50))
	s.Detail(name+"_small_p50_ms_plain", msOf(pp50))
	s.Detail(name+"_small_p99_ms_tunnel", msOf(lat[wanTunnel].Quantile(0.99)))
	s.Detail(name+"_small_p99_ms_plain", msOf(lat[wanPlain].Quantile(0.99)))
	s.Detail(name+"_small_added_p50_ms", msOf(added))
	s.Detail(name+"_small_added_p50_rtt", round3(float64(added)/float64(prof.RTT)))
	e.progress("    %-9s small      p50 tunnel %v, plain TCP %v (adds %.2f round trips); p99 %v | %v", name,
		tp50.Round(10*time.Microsecond), pp50.Round(10*time.Microsecond), float64(added)/float64(prof.RTT),
		lat[wanTunnel].Quantile(0.99).Round(10*time.Microsecond), lat[wanPlain].Quantile(0.99).Round(10*time.Microsecond))

	// 32 connections of small requests through the tunnel, alone and then
	// beside one bulk download: the bulk stream must not hold them up
	// (yamux's per-stream windows), beyond what the link's own queue does.
	alone, failed, sample := w.small(ctx, wanTunnel, 32, win)
	if failed > 0 {
		s.AddErrors(failed, sample)
	}
	bulkCtx, stopBulk := context.WithCancel(ctx)
	bulkDone := make(chan error, 1)
	go func() {
		_, err := w.download(bulkCtx, wanTunnel, win+5*time.Second)
		bulkDone <- err
	}()
	time.Sleep(min(win/4, time.Second)) // let the bulk stream get going
	beside, failed, sample := w.small(ctx, wanTunnel, 32, win)
	stopBulk()
	if err := <-bulkDone; err != nil && !errors.Is(err, context.Canceled) {
		s.AddErrors(1, "bulk download beside small requests: "+err.Error())
	}
	if failed > 0 {
		s.AddErrors(failed, sample)
	}
	a99, b99 := alone.Quantile(0.99), beside.Quantile(0.99)
	s.Detail(name+"_hol_p99_ms_alone", msOf(a99))
	s.Detail(name+"_hol_p99_ms_beside_bulk", msOf(b99))
	if a99 > 0 {
		s.Detail(name+"_hol_p99_factor", round3(float64(b99)/float64(a99)))
	}
	e.progress("    %-9s 32 small  p99 %v alone, %v beside a bulk download (%.2fx)", name,
		a99.Round(10*time.Microsecond), b99.Round(10*time.Microsecond), float64(b99)/float64(max(a99, 1)))
	return nil
}

func msOf(d time.Duration) float64 { return round3(float64(d) / 1e6) }
