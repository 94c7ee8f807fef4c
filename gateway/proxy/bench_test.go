package proxy

import (
	"io"
	"net/http"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/pipeops/tunnel/controlplane"
)

// BenchmarkProxy measures small requests (keep-alive, 16 concurrent
// clients) three ways in one run: straight to the upstream (no gateway),
// through the gateway in direct mode, and through the gateway and the agent's
// tunnel. Reported: requests/s and p99 latency.
//
//	go test -run '^$' -bench Proxy -benchtime 5s ./gateway/proxy/
func BenchmarkProxy(b *testing.B) {
	f := newFixture(b, 0)
	up := upstream(b, "A")
	f.startAgent("c", addr(up), "")
	f.setRoutes([]controlplane.Route{
		route("tunnel.example.com", "c", "tunnel", ""),
		route("direct.example.com", "c", "direct", addr(up)),
	}, []*controlplane.Cluster{{UUID: "c", IngressController: ingressNginx}})

	for _, mode := range []struct{ name, url, host string }{
		{"no-gateway", up.URL, ""},
		{"gateway-direct", f.front.URL, "direct.example.com"},
		{"gateway-tunnel", f.front.URL, "tunnel.example.com"},
	} {
		b.Run(mode.name, func(b *testing.B) {
			tr := &http.Transport{MaxIdleConnsPerHost: 64}
			defer tr.CloseIdleConnections()
			client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
			var mu sync.Mutex
			var lat []time.Duration
			b.SetParallelism(8) // 16 clients on 2 cores
			b.ReportAllocs()
			b.ResetTimer()
			start := time.Now()
			b.RunParallel(func(pb *testing.PB) {
				var mine []time.Duration
				for pb.Next() {
					req, _ := http.NewRequest("GET", mode.url+"/small", nil)
					if mode.host != "" {
						req.Host = mode.host
					}
					t0 := time.Now()
					resp, err := client.Do(req)
					if err != nil {
						b.Error(err)
						return
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != 200 {
						b.Errorf("status %d", resp.StatusCode)
						return
					}
					mine = append(mine, time.Since(t0))
				}
				mu.Lock()
				lat = append(lat, mine...)
				mu.Unlock()
			})
			elapsed := time.Since(start)
			b.StopTimer()
			sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
			if len(lat) > 0 {
				b.ReportMetric(float64(len(lat))/elapsed.Seconds(), "req/s")
				b.ReportMetric(float64(lat[len(lat)*50/100].Microseconds()), "p50_us")
				b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99_us")
			}
		})
	}
}
