package main

import "github.com/pipeops/tunnel/shared/settings"

// gatewaySettings lists every variable server.LoadConfig reads, with its
// default: `pipeops-gateway --help` prints it, and tests hold it to
// LoadConfig and to docs/gateway.md.
var gatewaySettings = settings.Table{
	{Env: "DATABASE_URL", Note: "(required)", Help: "the control plane's PostgreSQL (postgres://...): routes are read from it, heartbeats written to it"},
	{Env: "DATABASE_PASSWORD_FILE", Help: "a file holding the database password (a compose secret), mode 0640 or stricter; DATABASE_URL then names the user without a password"},
	{Env: "CONTROLPLANE_URL", Note: "(required)", Help: "the control plane's URL; its /.well-known/jwks.json verifies every token"},
	{Env: "HTTP_ADDR", Default: ":8080", Help: "plain HTTP listener"},
	{Env: "HTTPS_ADDR", Help: "HTTPS listener (needs a certificate source: TLS_CERT_DIR, TLS_CERT_FILE, ACME or TLS_SELF_SIGNED)"},
	{Env: "ADMIN_ADDR", Default: "127.0.0.1:9090", Help: "/healthz, /readyz, /metrics and /debug/pprof/ (keep it private)"},
	{Env: "GATEWAY_ID", Note: "(the host name)", Help: "this gateway's name in the clusters it holds (cluster show, the console); unique among gateways sharing the database"},
	{Env: "PEER_ADDR", Help: "peer listener (host:port, fixed port) where the other gateways forward the streams of the clusters this one holds; empty: a single gateway"},
	{Env: "PEER_URL", Note: "http://GATEWAY_ID:<port of PEER_ADDR>", Help: "where the other gateways reach PEER_ADDR"},
	{Env: "PEER_SECRET_FILE", Help: "file with the secret (32+ characters, the same on every gateway) that signs the peer links; needed with PEER_ADDR"},
	{Env: "GATEWAY_HOSTS", Help: "comma-separated hosts that serve /ws and /k8s/; empty: any host without a route"},
	{Env: "TLS_CERT_DIR", Help: "a directory of HOST.crt and HOST.key per hostname, chosen by SNI"},
	{Env: "TLS_CERT_FILE", Help: "the default certificate (PEM), with TLS_KEY_FILE"},
	{Env: "TLS_KEY_FILE", Help: "the default certificate's key (PEM), with TLS_CERT_FILE"},
	{Env: "TLS_SELF_SIGNED", Kind: settings.Bool, Default: "false", Help: "make a development certificate when no default is given"},
	{Env: "HTTP_REDIRECT_HTTPS", Kind: settings.Bool, Default: "false", Help: "answer plain HTTP with a redirect to HTTPS"},
	{Env: "K8S_ALLOW_PLAIN_HTTP", Kind: settings.Bool, Default: "false", Help: "serve /k8s/ on the plain HTTP listener too (only behind a proxy that terminates TLS)"},
	{Env: "K8S_API_DOMAIN", Help: "a domain under which {cluster}.DOMAIN serves each cluster's Kubernetes API with no path prefix"},
	{Env: "ACME", Kind: settings.Bool, Default: "false", Help: "get certificates for routed hosts and GATEWAY_HOSTS from an ACME CA"},
	{Env: "ACME_EMAIL", Help: "contact address given to the CA"},
	{Env: "ACME_CACHE_DIR", Default: "/var/lib/pipeops-gateway/acme", Help: "where certificates and the account key are kept (keep it on a volume)"},
	{Env: "ACME_DIRECTORY_URL", Note: "Let's Encrypt production", Help: "the CA's https:// directory URL"},
	{Env: "ACME_CA_FILE", Help: "PEM roots that verify a private CA's HTTPS; needs ACME=true"},
	{Env: "ACME_RENEW_BEFORE", Kind: settings.Duration, Note: "a third of the lifetime, at most `720h`", Help: "renew a certificate this long before it expires; needs ACME=true"},
	{Env: "RESPONSE_HEADER_TIMEOUT", Kind: settings.Duration, Default: "60s", Help: "wait for upstream response headers, then 504; bodies and streams have no limit"},
	{Env: "IDLE_TIMEOUT", Kind: settings.Duration, Default: "120s", Help: "visitors' idle keep-alive connections"},
	{Env: "SHUTDOWN_TIMEOUT", Kind: settings.Duration, Default: "30s", Help: "drain time on the first signal"},
	{Env: "ROUTE_RELOAD_INTERVAL", Kind: settings.Duration, Default: "5m", Help: "full route reload, a backstop to LISTEN/NOTIFY"},
	{Env: "REVOCATION_CHECK_INTERVAL", Kind: settings.Duration, Default: "15s", Help: "how often the tokens of open connections are checked for revocation"},
	{Env: "STREAM_WINDOW", Default: "4194304", Help: "the gateway's yamux receive window per stream (a download in flight; what a slow visitor can hold in memory), in bytes (262144 to 67108852)"},
	{Env: "AGENT_STREAM_WINDOW", Default: "16777216", Help: "yamux stream window announced to agents (an upload in flight; agent memory per stalled stream), in bytes (262144 to 67108852)"},
	{Env: "MAX_REQUEST_BODY", Default: "1Gi", Help: "largest request body (like 100Mi); 0 for no limit"},
	{Env: "MAX_HEADER_BYTES", Default: "1Mi", Help: "largest request head, 4Ki to 1Gi"},
	{Env: "MAX_STREAMS_PER_SESSION", Default: "10000", Help: "streams open at once to one cluster's agent"},
	{Env: "AUDIT_RETENTION", Kind: settings.Duration, Default: "720h", Help: "how long Kubernetes API audit entries are kept"},
	{Env: "AUDIT_MAX_ROWS", Default: "1000000", Help: "audit entries kept at most, all gateways together"},
	{Env: "AUDIT_QUEUE", Default: "10000", Help: "audit entries waiting for the database at most (1 to 1000000)"},
	{Env: "TRAFFIC_RETENTION", Kind: settings.Duration, Default: "24h", Help: "how long the per-minute public traffic figures are kept"},
	{Env: "LOG_LEVEL", Default: "info", Help: "debug, info, warn or error"},
	{Env: "LOG_FORMAT", Default: "text", Help: "text or json"},
}
