package cli

import "github.com/pipeops/tunnel/shared/settings"

// Settings lists every variable LoadConfig reads, with its default:
// `pipeops-controlplane --help` prints it, and tests hold it to LoadConfig
// and to docs/controlplane.md.
var Settings = settings.Table{
	{Env: "DATABASE_URL", Note: "(required)", Help: "PostgreSQL, as a postgres:// URL"},
	{Env: "DATABASE_PASSWORD_FILE", Help: "a file holding the database password (a compose secret), mode 0640 or stricter; DATABASE_URL then names the user without a password"},
	{Env: "KEY_ENCRYPTION_KEY_FILE", Note: "(required, or the next)", Help: "a file holding the key-encryption key (KEK) that seals the token signing keys: base64 of 32 random bytes ('openssl rand -base64 32'), mode 0600, 0400, 0640 or 0440; every command but migrate, keys list, keys retire and audit list needs it"},
	{Env: "KEY_ENCRYPTION_KEY", Help: "the KEK itself, for platforms that inject secrets as environment variables; not with KEY_ENCRYPTION_KEY_FILE"},
	{Env: "KEY_ENCRYPTION_KEY_PREVIOUS_FILE", Help: "during a KEK rotation: comma-separated files of the previous KEKs, which only open"},
	{Env: "KEY_ENCRYPTION_KEY_PREVIOUS", Help: "during a KEK rotation: the previous KEKs themselves, comma-separated"},
	{Env: "LISTEN_ADDR", Default: ":8080", Help: "the API's listen address"},
	{Env: "ADMIN_ADDR", Default: "127.0.0.1:9091", Help: "/healthz, /readyz and /metrics, off the public API port (keep it private)"},
	{Env: "GATEWAY_WS_URL", Note: "(required by `serve`)", Help: "where agents open their tunnel, e.g. wss://gateway.example.com/ws"},
	{Env: "GATEWAY_URL", Help: "the gateway's public HTTPS URL, for kubeconfigs"},
	{Env: "GATEWAY_CA_FILE", Help: "PEM certificate authority that kubeconfigs trust for GATEWAY_URL; empty: the system roots"},
	{Env: "K8S_API_DOMAIN", Help: "the gateway's K8S_API_DOMAIN, for kubeconfigs"},
	{Env: "API_URL", Help: "this control plane's public URL, for install commands"},
	{Env: "ROUTE_TTL", Kind: settings.Duration, Default: "24h", Help: "a route not refreshed for this long expires"},
	{Env: "REAPER_INTERVAL", Kind: settings.Duration, Default: "1m", Help: "how often expired routes are deleted"},
	{Env: "ROUTE_BASE_DOMAINS", Help: "comma-separated domains the platform hands out: cluster prod owns prod.<base>"},
	{Env: "HOSTNAME_VERIFICATION", Default: "dns", Help: "dns: a custom domain routes once its TXT record proves ownership; off: at once"},
	{Env: "DNS_RESOLVER", Note: "(the system's)", Help: "host:port of the DNS server custom domains' TXT records are checked with"},
	{Env: "HOSTNAME_CHECK_INTERVAL", Kind: settings.Duration, Default: "1m", Help: "how often pending custom domains are checked"},
	{Env: "TLS_CERT_FILE", Help: "serve HTTPS with this certificate (PEM), with TLS_KEY_FILE"},
	{Env: "TLS_KEY_FILE", Help: "the certificate's key (PEM), with TLS_CERT_FILE"},
	{Env: "SHUTDOWN_TIMEOUT", Kind: settings.Duration, Default: "15s", Help: "drain time on the first signal"},
	{Env: "ADMIN_IDENTITY_USER", Default: "pipeops:admin", Help: "the person every admin token names (its sub)"},
	{Env: "ADMIN_IDENTITY_GROUPS", Default: "pipeops:admins", Help: "comma-separated groups every admin token carries"},
	{Env: "REVOCATION_CHECK_INTERVAL", Kind: settings.Duration, Default: "15s", Help: "how often the tokens of open agent registration sockets are checked for revocation"},
	{Env: "CONSOLE", Kind: settings.Bool, Default: "true", Help: "serve the web console at /console/ (sign in with an admin token)"},
	{Env: "CONSOLE_SESSION_TTL", Kind: settings.Duration, Default: "8h", Help: "how long a console sign-in lasts; signing out ends it sooner"},
	{Env: "CONSOLE_TRAFFIC_REFRESH", Kind: settings.Duration, Default: "10s", Help: "how often a console cluster page reloads its traffic charts"},
	{Env: "GRAFANA_URL", Help: "the Grafana dashboard's URL, linked from the console (the compose monitoring profile's)"},
	{Env: "LOG_LEVEL", Default: "info", Help: "debug, info, warn or error"},
	{Env: "LOG_FORMAT", Default: "text", Help: "text or json"},
}
