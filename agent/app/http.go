package app

import (
	"encoding/json"
	"html/template"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/pipeops/tunnel/shared/version"
)

// Status is what the agent's status endpoints show.
type Status struct {
	ClusterID     string     `json:"cluster_id"`
	ClusterName   string     `json:"cluster_name"`
	Connected     bool       `json:"tunnel_connected"`
	LastHeartbeat *time.Time `json:"last_heartbeat_ack,omitempty"`
	Mode          string     `json:"routing_mode"`
	Endpoint      string     `json:"public_endpoint,omitempty"`
	Routes        []string   `json:"routes"`
	Version       string     `json:"version"`
}

var statusPage = template.Must(template.New("status").Parse(`<!doctype html>
<html><head><meta charset="utf-8"><title>pipeops agent</title>
<style>body{font:14px system-ui,sans-serif;margin:2em;color:#222}td{padding:.2em 1em .2em 0}
.ok{color:#080}.bad{color:#b00}code{background:#f3f3f3;padding:0 .3em}</style></head><body>
<h1>pipeops agent</h1>
<table>
<tr><td>cluster</td><td><code>{{.ClusterName}}</code> ({{.ClusterID}})</td></tr>
<tr><td>tunnel</td><td>{{if .Connected}}<span class="ok">connected</span>{{else}}<span class="bad">not connected</span>{{end}}</td></tr>
<tr><td>last heartbeat acknowledged</td><td>{{if .LastHeartbeat}}{{.LastHeartbeat.Format "2006-01-02 15:04:05 MST"}}{{else}}never{{end}}</td></tr>
<tr><td>routing mode</td><td>{{.Mode}}{{if .Endpoint}} via {{.Endpoint}}{{end}}</td></tr>
<tr><td>version</td><td>{{.Version}}</td></tr>
</table>
<h2>synced routes ({{len .Routes}})</h2>
<ul>{{range .Routes}}<li><code>{{.}}</code></li>{{else}}<li>none</li>{{end}}</ul>
</body></html>`))

// handler serves /health (alive), /ready (API server reachable, tunnel up and a heartbeat
// acknowledged recently), /metrics, /version, /status (JSON) and / (a
// status page).
//
// With withPprof, /debug/pprof/ too (AGENT_PPROF): off by default, since the
// port is reachable inside the cluster.
func handler(status func() Status, ready func() (bool, string), reg *prometheus.Registry, withPprof bool) http.Handler {
	mux := http.NewServeMux()
	if withPprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	mux.HandleFunc("/health", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok\n")) })
	mux.HandleFunc("/ready", func(w http.ResponseWriter, _ *http.Request) {
		if ok, why := ready(); !ok {
			http.Error(w, why, http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ok\n"))
	})
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/version", func(w http.ResponseWriter, _ *http.Request) {
		w.Write([]byte(version.String("pipeops-agent") + "\n"))
	})
	mux.HandleFunc("/status", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(status())
	})
	mux.HandleFunc("/{$}", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_ = statusPage.Execute(w, status())
	})
	return mux
}
