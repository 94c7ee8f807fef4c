package api_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/pipeops/tunnel/controlplane"
	"github.com/pipeops/tunnel/controlplane/api"
	"github.com/pipeops/tunnel/controlplane/cptest"
	"github.com/pipeops/tunnel/controlplane/hostnames"
	"github.com/pipeops/tunnel/controlplane/tokens"
	"github.com/pipeops/tunnel/shared/auth"
)

type trafficAnswer struct {
	Cluster string `json:"cluster"`
	Host    string `json:"host"`
	Minutes int    `json:"minutes"`
	Points  []struct {
		Minute   time.Time `json:"minute"`
		Requests int64     `json:"requests"`
		Errors   int64     `json:"errors"`
		BytesIn  int64     `json:"bytes_in"`
		BytesOut int64     `json:"bytes_out"`
		P50Ms    float64   `json:"p50_ms"`
		P99Ms    float64   `json:"p99_ms"`
	} `json:"points"`
	Hosts []struct {
		Host     string  `json:"host"`
		Requests int64   `json:"requests"`
		Errors   int64   `json:"errors"`
		BytesIn  int64   `json:"bytes_in"`
		BytesOut int64   `json:"bytes_out"`
		P50Ms    float64 `json:"p50_ms"`
		P99Ms    float64 `json:"p99_ms"`
	} `json:"hosts"`
}

// trafficDelta is n requests of host in minute, errs of them failed, all
// taking d.
func trafficDelta(minute time.Time, cluster, host string, n, errs int64, d time.Duration) controlplane.TrafficDelta {
	c := controlplane.TrafficCounts{Requests: n, Errors: errs, BytesIn: n, BytesOut: 1000 * n}
	c.Latency[controlplane.TrafficBucket(d)] = n
	return controlplane.TrafficDelta{Minute: minute, ClusterUUID: cluster, Hostname: host, TrafficCounts: c}
}

func (a *trafficAnswer) requests() int64 {
	var n int64
	for _, p := range a.Points {
		n += p.Requests
	}
	return n
}

func TestClusterTraffic(t *testing.T) {
	f := newFixture(t)
	c := f.createCluster("prod-eu")
	other := f.createCluster("other")
	id := c.Cluster.UUID
	now := time.Now().UTC().Truncate(time.Minute)
	busy := now.Add(-5 * time.Minute)
	err := f.db.AddTraffic(context.Background(), []controlplane.TrafficDelta{
		trafficDelta(busy, id, "a.example.com", 8, 1, 30*time.Millisecond),
		trafficDelta(busy, id, "a.example.com", 2, 0, 3*time.Second),
		trafficDelta(busy, id, "b.example.com", 2, 2, time.Millisecond),
		trafficDelta(now.Add(-90*time.Minute), id, "a.example.com", 7, 0, time.Millisecond), // before the default window
		trafficDelta(busy, other.Cluster.UUID, "a.example.com", 100, 0, time.Millisecond),
	})
	if err != nil {
		t.Fatal(err)
	}

	var got trafficAnswer
	if code := f.do("GET", "/api/v1/admin/clusters/prod-eu/traffic", f.admin, nil, &got); code != 200 {
		t.Fatalf("HTTP %d", code)
	}
	if got.Cluster != id || got.Minutes != 60 || len(got.Points) != 60 || got.Host != "" {
		t.Fatalf("cluster %q minutes %d, %d points, host %q", got.Cluster, got.Minutes, len(got.Points), got.Host)
	}
	// Every minute, one apart, ending with the current one (which may have
	// moved on since the rows were written).
	for i := 1; i < len(got.Points); i++ {
		if d := got.Points[i].Minute.Sub(got.Points[i-1].Minute); d != time.Minute {
			t.Fatalf("points %d and %d are %s apart", i-1, i, d)
		}
	}
	if last := got.Points[59].Minute; last.Before(now) || last.After(now.Add(time.Minute)) {
		t.Errorf("last point at %s, want the current minute %s", last, now)
	}
	var found bool
	for _, p := range got.Points {
		switch {
		case p.Minute.Equal(busy):
			found = true
			// 12 requests: 2 at 1 ms (bucket 0-1), 8 at 30 ms (25-50), 2
			// at 3 s (2.5-5 s).
			if p.Requests != 12 || p.Errors != 3 || p.BytesIn != 12 || p.BytesOut != 12000 || p.P50Ms != 25+25*4.0/8 || p.P99Ms != 4850 {
				t.Errorf("busy minute %+v", p)
			}
		case p.Requests != 0 || p.P50Ms != 0:
			t.Errorf("minute %s: %+v, want zeros", p.Minute, p)
		}
	}
	if !found {
		t.Errorf("no point at %s", busy)
	}
	if len(got.Hosts) != 2 || got.Hosts[0].Host != "a.example.com" || got.Hosts[0].Requests != 10 || got.Hosts[0].Errors != 1 ||
		got.Hosts[1].Host != "b.example.com" || got.Hosts[1].Requests != 2 || got.Hosts[1].P99Ms != 0.99 {
		t.Errorf("hosts %+v", got.Hosts)
	}

	// By id, one host (in any case), a longer window.
	got = trafficAnswer{}
	if code := f.do("GET", "/api/v1/admin/clusters/"+id+"/traffic?host=B.example.com&minutes=120", f.admin, nil, &got); code != 200 {
		t.Fatalf("by id: HTTP %d", code)
	}
	if got.Minutes != 120 || len(got.Points) != 120 || got.Host != "b.example.com" || got.requests() != 2 || len(got.Hosts) != 2 {
		t.Errorf("host b over two hours: %d minutes, %d points, host %q, %d requests, hosts %+v",
			got.Minutes, len(got.Points), got.Host, got.requests(), got.Hosts)
	}
	got = trafficAnswer{}
	if code := f.do("GET", "/api/v1/admin/clusters/prod-eu/traffic?minutes=120", f.admin, nil, &got); code != 200 || got.requests() != 19 {
		t.Errorf("every host over two hours: HTTP %d, %d requests, want 19", code, got.requests())
	}
	got = trafficAnswer{}
	if code := f.do("GET", "/api/v1/admin/clusters/prod-eu/traffic?minutes=1440", f.admin, nil, &got); code != 200 || len(got.Points) != 1440 {
		t.Errorf("a day: HTTP %d, %d points", code, len(got.Points))
	}

	// The wire names, as a console reads them.
	req, _ := http.NewRequest("GET", f.url+"/api/v1/admin/clusters/prod-eu/traffic?minutes=10", nil)
	req.Header.Set("Authorization", "Bearer "+f.admin)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, field := range []string{`"cluster":`, `"minutes":10`, `"points":[`, `"hosts":[`, `"minute":"`, `"requests":`, `"errors":`,
		`"bytes_in":`, `"bytes_out":`, `"p50_ms":`, `"p99_ms":`, `"host":"a.example.com"`} {
		if !strings.Contains(string(raw), field) {
			t.Errorf("answer lacks %s: %s", field, raw)
		}
	}

	for _, tc := range []struct {
		name, path, token string
		want              int
		code              string
	}{
		{"minutes 0", "/api/v1/admin/clusters/prod-eu/traffic?minutes=0", f.admin, 400, "invalid"},
		{"minutes over a day", "/api/v1/admin/clusters/prod-eu/traffic?minutes=1441", f.admin, 400, "invalid"},
		{"minutes not a number", "/api/v1/admin/clusters/prod-eu/traffic?minutes=1h", f.admin, 400, "invalid"},
		{"host not a hostname", "/api/v1/admin/clusters/prod-eu/traffic?host=a%00b", f.admin, 400, "invalid"},
		{"unknown cluster", "/api/v1/admin/clusters/nope/traffic", f.admin, 404, "not_found"},
		{"no token", "/api/v1/admin/clusters/prod-eu/traffic", "", 401, "unauthorized"},
		{"agent token", "/api/v1/admin/clusters/prod-eu/traffic", c.AgentToken, 401, "unauthorized"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var e apiError
			if code := f.do("GET", tc.path, tc.token, nil, &e); code != tc.want || e.Error.Code != tc.code || e.Error.Message == "" {
				t.Errorf("HTTP %d %+v, want %d %s", code, e, tc.want, tc.code)
			}
		})
	}
}

// Without a traffic store the endpoint says so, rather than 404.
func TestClusterTrafficUnavailable(t *testing.T) {
	cp := cptest.Store(t)
	s, err := api.New(api.Config{GatewayWSURL: gatewayWS}, api.Deps{Clusters: cp.DB, Routes: cp.DB, Tokens: cp.DB, Hostnames: cp.DB,
		DNS: &hostnames.DNSVerifier{Store: cp.DB, Resolver: hostnames.NewResolver("127.0.0.1:9")}, Issuer: cp.Issuer, DB: cp.DB})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(func() { srv.Close(); s.Close() })
	admin, _, err := cp.Issuer.Issue(context.Background(), tokens.Request{Kind: auth.KindAdmin, Subject: "test"})
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{t: t, url: srv.URL, db: cp.DB, issuer: cp.Issuer, admin: admin}
	f.createCluster("prod-eu")
	var e apiError
	if code := f.do("GET", "/api/v1/admin/clusters/prod-eu/traffic", admin, nil, &e); code != 503 || e.Error.Code != "unavailable" ||
		!strings.Contains(e.Error.Message, "traffic") {
		t.Errorf("HTTP %d %+v, want 503 saying why", code, e)
	}
}
