package api

import (
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/pipeops/tunnel/controlplane"
)

// DefaultTrafficMinutes is the window of a traffic request without
// ?minutes=: the last hour, what a console's small charts show.
const DefaultTrafficMinutes = 60

// trafficPointView is one minute of traffic as the API shows it.
type trafficPointView struct {
	Minute   time.Time `json:"minute"`
	Requests int64     `json:"requests"`
	Errors   int64     `json:"errors"`
	BytesIn  int64     `json:"bytes_in"`
	BytesOut int64     `json:"bytes_out"`
	P50Ms    float64   `json:"p50_ms"`
	P99Ms    float64   `json:"p99_ms"`
}

// trafficHostView is one hostname's traffic over the window.
type trafficHostView struct {
	Host     string  `json:"host"`
	Requests int64   `json:"requests"`
	Errors   int64   `json:"errors"`
	BytesIn  int64   `json:"bytes_in"`
	BytesOut int64   `json:"bytes_out"`
	P50Ms    float64 `json:"p50_ms"`
	P99Ms    float64 `json:"p99_ms"`
}

type trafficView struct {
	Cluster string             `json:"cluster"`
	Host    string             `json:"host,omitempty"`
	Minutes int                `json:"minutes"`
	Points  []trafficPointView `json:"points"`
	Hosts   []trafficHostView  `json:"hosts"`
}

// clusterTraffic answers GET /api/v1/admin/clusters/{cluster}/traffic
// ?minutes=N (1 to controlplane.MaxTrafficMinutes, default 60) &host=H:
// the cluster's public traffic minute by minute, the current minute last
// and every minute present, summed over its hosts or of host H alone; and
// each host's figures over the window.
func (s *Server) clusterTraffic(w http.ResponseWriter, r *http.Request) {
	if s.traffic == nil {
		writeError(w, r, controlplane.Errorf(controlplane.EUNAVAILABLE, "traffic figures are not served by this control plane (it was started without a traffic store)"), nil)
		return
	}
	minutes, err := trafficMinutes(r.URL.Query().Get("minutes"))
	if err != nil {
		writeError(w, r, err, nil)
		return
	}
	host, err := trafficHost(r.URL.Query().Get("host"))
	if err != nil {
		writeError(w, r, err, nil)
		return
	}
	c, err := s.findCluster(r.Context(), chi.URLParam(r, "cluster"))
	if err != nil {
		writeError(w, r, err, s.log)
		return
	}
	until := time.Now().UTC().Truncate(time.Minute)
	q := controlplane.TrafficQuery{Cluster: c.UUID, Host: host, Since: until.Add(-time.Duration(minutes-1) * time.Minute), Until: until}
	points, err := s.traffic.Traffic(r.Context(), q)
	if err != nil {
		writeError(w, r, err, s.log)
		return
	}
	hosts, err := s.traffic.TrafficHosts(r.Context(), q)
	if err != nil {
		writeError(w, r, err, s.log)
		return
	}
	out := trafficView{Cluster: c.UUID, Host: host, Minutes: minutes,
		Points: make([]trafficPointView, 0, len(points)), Hosts: make([]trafficHostView, 0, len(hosts))}
	for _, p := range points {
		out.Points = append(out.Points, trafficPointView{Minute: p.Minute.UTC(), Requests: p.Requests, Errors: p.Errors,
			BytesIn: p.BytesIn, BytesOut: p.BytesOut, P50Ms: roundMs(p.P50Ms), P99Ms: roundMs(p.P99Ms)})
	}
	for _, h := range hosts {
		out.Hosts = append(out.Hosts, trafficHostView{Host: h.Hostname, Requests: h.Requests, Errors: h.Errors,
			BytesIn: h.BytesIn, BytesOut: h.BytesOut, P50Ms: roundMs(h.P50Ms), P99Ms: roundMs(h.P99Ms)})
	}
	writeJSON(w, http.StatusOK, out)
}

// trafficMinutes parses ?minutes=.
func trafficMinutes(v string) (int, error) {
	if v == "" {
		return DefaultTrafficMinutes, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > controlplane.MaxTrafficMinutes {
		return 0, controlplane.Errorf(controlplane.EINVALID, "minutes=%q: want a whole number of minutes from 1 to %d", v, controlplane.MaxTrafficMinutes)
	}
	return n, nil
}

// trafficHost parses ?host=, a route's hostname as the gateways record it
// (lower case, a wildcard route's "*.example.com" included).
func trafficHost(v string) (string, error) {
	v = strings.ToLower(strings.TrimSuffix(v, "."))
	if len(v) > 253 || strings.Trim(v, "abcdefghijklmnopqrstuvwxyz0123456789.-*") != "" {
		return "", controlplane.Errorf(controlplane.EINVALID, "host=%q is not a hostname", v)
	}
	return v, nil
}

// roundMs keeps estimates readable: they are interpolations within a
// bucket, and their hundredths of a millisecond mean nothing.
func roundMs(ms float64) float64 { return math.Round(ms*100) / 100 }
