// Package cli is the pipeops-controlplane command: serve, migrate, and the
// admin subcommands that work on the database directly (so the first
// cluster and the first admin token can be made before anyone has a token).
package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"
	"unicode"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/pipeops/tunnel/controlplane"
	"github.com/pipeops/tunnel/controlplane/api"
	"github.com/pipeops/tunnel/controlplane/hostnames"
	"github.com/pipeops/tunnel/controlplane/postgres"
	"github.com/pipeops/tunnel/controlplane/tokens"
	"github.com/pipeops/tunnel/shared/auth"
	"github.com/pipeops/tunnel/shared/version"
)

const usage = `pipeops-controlplane: route store, cluster registry and token service.

Usage:
  pipeops-controlplane serve                      run the API (migrates the database first)
  pipeops-controlplane migrate                    apply database migrations and exit
  pipeops-controlplane cluster create NAME [--json]  create a cluster; prints its agent token and install command
  pipeops-controlplane cluster list [--wide]      list clusters and their status; --wide adds the agent's
                                                  hostname, region and cloud provider
  pipeops-controlplane token create --kind KIND [--cluster C]... [--ttl D] [--user U [--group G]...] [--json]
                                                  mint a token: admin (carries ADMIN_IDENTITY_USER and
                                                  ADMIN_IDENTITY_GROUPS), user (reaches the named clusters'
                                                  Kubernetes API through the gateway, for person U in groups G)
                                                  or agent (one cluster); --subject is the older name of --user
  pipeops-controlplane token revoke ID            revoke a token by id
  pipeops-controlplane kubeconfig CLUSTER [--user U] [--group G]...
                                                  print a kubeconfig reaching CLUSTER through the gateway; its
                                                  token names person U in groups G (default: no person,
                                                  subject kubeconfig:CLUSTER)
  pipeops-controlplane hostname list [--cluster C] [--json]
                                                  list route hostnames: verified, or the DNS TXT record to publish
  pipeops-controlplane hostname verify CLUSTER HOSTNAME
                                                  check a pending hostname's TXT record now
  pipeops-controlplane domain grant CLUSTER DOMAIN
                                                  let CLUSTER route DOMAIN and every name below it, no DNS challenge
  pipeops-controlplane domain revoke DOMAIN       take a grant back
  pipeops-controlplane domain list                list domain grants
  pipeops-controlplane audit list [--cluster C] [--user U] [--since D] [--limit N] [--json]
                                                  Kubernetes API requests made through the gateways, newest
                                                  first (default 100): who, verb, path, status, bytes, duration
  pipeops-controlplane keys list                  list the token signing keys: which signs, which KEK sealed each
  pipeops-controlplane keys rotate                make a new signing key; the old ones keep verifying until retired
  pipeops-controlplane keys retire KID            delete an old signing key: the tokens it signed stop verifying
  pipeops-controlplane keys rewrap                seal every signing key again under the current KEK
  pipeops-controlplane version                    print the version
  pipeops-controlplane healthcheck URL            exit 0 if GET URL answers 2xx (container healthchecks)

Configuration comes from the environment: DATABASE_URL (required), LISTEN_ADDR,
GATEWAY_WS_URL (required by serve), GATEWAY_URL, GATEWAY_CA_FILE, API_URL, ROUTE_TTL,
REAPER_INTERVAL, ROUTE_BASE_DOMAINS, HOSTNAME_VERIFICATION, DNS_RESOLVER,
HOSTNAME_CHECK_INTERVAL, TLS_CERT_FILE, TLS_KEY_FILE, SHUTDOWN_TIMEOUT, ADMIN_IDENTITY_USER,
ADMIN_IDENTITY_GROUPS, LOG_LEVEL, LOG_FORMAT. See docs/controlplane.md.

The signing keys are stored sealed under a key-encryption key (KEK): KEY_ENCRYPTION_KEY_FILE,
a file holding base64 of 32 random bytes ('openssl rand -base64 32'), or KEY_ENCRYPTION_KEY,
required by every command but migrate, keys list, keys retire and audit list. During a KEK rotation,
KEY_ENCRYPTION_KEY_PREVIOUS_FILE (comma-separated files) names the KEKs that only open.
`

// Run runs the command line args (without the program name) and returns the
// exit code. When ctx ends, serve drains for SHUTDOWN_TIMEOUT.
func Run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		fmt.Fprint(stdout, usage)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	if args[0] == "version" || args[0] == "--version" {
		fmt.Fprintln(stdout, version.String("pipeops-controlplane"))
		return 0
	}
	cfg, err := LoadConfig(getenv)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 2
	}
	log := newLogger(cfg, stderr)
	err = dispatch(ctx, cfg, log, args, stdout)
	var ue usageError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "%v\n\n%s", err, usage)
		return 2
	default:
		fmt.Fprintln(stderr, "error:", err)
		return 1
	}
}

type usageError struct{ msg string }

func (u usageError) Error() string { return u.msg }

func newLogger(cfg Config, w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: cfg.LogLevel}
	if cfg.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

func dispatch(ctx context.Context, cfg Config, log *slog.Logger, args []string, stdout io.Writer) error {
	cmd, rest := args[0], args[1:]
	// Checked before the database is opened: a mistake there costs no
	// connection and leaves nothing half done.
	var (
		create tokenCreate
		kube   kubeconfigArgs
		err    error
	)
	switch {
	case cmd == "serve":
		err = cfg.ValidateServe()
	case cmd == "token" && len(rest) > 0 && rest[0] == "create":
		create, err = parseTokenCreate(rest[1:])
	case cmd == "kubeconfig":
		kube, err = parseKubeconfig(rest)
		if err == nil && cfg.GatewayURL == "" {
			err = errors.New("GATEWAY_URL is not set: a kubeconfig must point at the gateway's public URL")
		}
	}
	if err != nil {
		return err
	}
	db, err := postgres.Open(ctx, cfg.DatabaseURL)
	if err != nil {
		return err
	}
	defer db.Close()
	db.RouteTTL = cfg.RouteTTL
	db.Ownership = cfg.Ownership
	applied, err := postgres.Migrate(ctx, db.Pool())
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	for _, name := range applied {
		log.Info("applied migration", "name", name)
	}
	if cmd == "migrate" {
		fmt.Fprintf(stdout, "database is up to date (%d migrations applied now)\n", len(applied))
		return nil
	}
	if cmd == "keys" {
		return keysCmd(ctx, cfg, db, rest, stdout)
	}
	if cmd == "audit" {
		return auditCmd(ctx, db, rest, stdout)
	}
	if err := cfg.RequireKEK(); err != nil {
		return err
	}
	issuer, err := tokens.NewIssuer(ctx, db, db, tokens.Options{KEK: cfg.KEK, Logger: log, AdminUser: cfg.AdminUser, AdminGroups: cfg.AdminGroups})
	if err != nil {
		return kekHint(err)
	}
	switch cmd {
	case "serve":
		return serve(ctx, cfg, log, db, issuer)
	case "cluster":
		return clusterCmd(ctx, cfg, db, issuer, rest, stdout)
	case "token":
		return tokenCmd(ctx, db, issuer, rest, create, stdout)
	case "hostname":
		return hostnameCmd(ctx, cfg, db, rest, stdout)
	case "domain":
		return domainCmd(ctx, db, rest, stdout)
	case "kubeconfig":
		c, err := findCluster(ctx, db, kube.cluster)
		if err != nil {
			return err
		}
		req := tokens.Request{Kind: auth.KindUser, Clusters: []string{c.UUID}, Subject: kube.user, Groups: kube.groups}
		if kube.user == "" {
			req.Subject = "kubeconfig:" + c.Name
		}
		tok, _, err := issuer.Issue(ctx, req)
		if err != nil {
			return err
		}
		b, err := api.Kubeconfig(cfg.GatewayURL, cfg.K8sAPIDomain, cfg.GatewayCA, c, tok)
		if err != nil {
			return err
		}
		_, err = stdout.Write(b)
		return err
	default:
		return usageError{fmt.Sprintf("unknown command %q", cmd)}
	}
}

func clusterCmd(ctx context.Context, cfg Config, db *postgres.DB, issuer *tokens.Issuer, args []string, stdout io.Writer) error {
	switch {
	case (len(args) == 2 || len(args) == 3 && args[2] == "--json") && args[0] == "create":
		out, err := api.CreateCluster(ctx, db, issuer, cfg.APIURL, args[1])
		if err != nil {
			return err
		}
		if len(args) == 3 {
			return json.NewEncoder(stdout).Encode(map[string]any{"id": out.Cluster.UUID, "name": out.Cluster.Name,
				"agent_token": out.AgentToken, "install_command": out.InstallCommand})
		}
		fmt.Fprintf(stdout, "cluster %s created (id %s)\n\nagent token (shown once; keep it secret):\n%s\n\ninstall the agent:\n%s\n",
			out.Cluster.Name, out.Cluster.UUID, out.AgentToken, out.InstallCommand)
		return nil
	case len(args) == 1 && args[0] == "list", len(args) == 2 && args[0] == "list" && args[1] == "--wide":
		cs, err := db.Clusters(ctx)
		if err != nil {
			return err
		}
		printClusters(stdout, cs, len(args) == 2)
		return nil
	}
	return usageError{"usage: cluster create NAME [--json] | cluster list [--wide]"}
}

// printClusters writes the cluster table; wide adds where each agent runs,
// as it said when it registered.
func printClusters(w io.Writer, cs []*controlplane.Cluster, wide bool) {
	row := func(cells ...string) {
		line := fmt.Sprintf("%-36s  %-24s  %-12s  %-20s", cells[0], cells[1], cells[2], cells[3])
		if wide {
			line += fmt.Sprintf("  %-24s  %-16s  %s", cells[4], cells[5], cells[6])
		}
		fmt.Fprintln(w, strings.TrimRight(line, " "))
	}
	row("ID", "NAME", "STATUS", "LAST HEARTBEAT", "HOSTNAME", "REGION", "PROVIDER")
	for _, c := range cs {
		hb := "never"
		if !c.LastHeartbeat.IsZero() {
			hb = c.LastHeartbeat.UTC().Format(time.RFC3339)
		}
		info := func(key string) string {
			if s, ok := c.AgentInfo[key].(string); ok && s != "" {
				// The agent chose it: no escape sequences to the terminal.
				return strings.Map(func(r rune) rune {
					if unicode.IsControl(r) {
						return '?'
					}
					return r
				}, s)
			}
			return "-"
		}
		row(c.UUID, c.Name, c.Status, hb, info("hostname"), info("region"), info("cloud_provider"))
	}
}

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

// tokenCmd runs `token revoke ID` and `token create`, whose arguments
// dispatch parsed into create.
func tokenCmd(ctx context.Context, db *postgres.DB, issuer *tokens.Issuer, args []string, create tokenCreate, stdout io.Writer) error {
	if len(args) == 2 && args[0] == "revoke" {
		if err := db.RevokeToken(ctx, args[1], time.Now()); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "token %s revoked\n", args[1])
		return nil
	}
	if len(args) < 1 || args[0] != "create" {
		return usageError{"usage: token create --kind KIND [--cluster C]... [--ttl D] [--user U [--group G]...] | token revoke ID"}
	}
	req := create.req
	for _, ref := range create.clusters {
		uuid := ref
		if ref != "*" {
			c, err := findCluster(ctx, db, ref)
			if err != nil {
				return err
			}
			uuid = c.UUID
		}
		if req.Kind == auth.KindAgent {
			req.ClusterUUID = uuid
		} else {
			req.Clusters = append(req.Clusters, uuid)
		}
	}
	tok, rec, err := issuer.Issue(ctx, req)
	if err != nil {
		return err
	}
	if create.asJSON {
		out := map[string]any{"token": tok, "id": rec.ID, "expires_at": rec.ExpiresAt, "subject": rec.Subject}
		if len(rec.Groups) > 0 {
			out["groups"] = rec.Groups
		}
		return json.NewEncoder(stdout).Encode(out)
	}
	fmt.Fprintln(stdout, tok)
	return nil
}

// serve runs the API until ctx ends, then drains for ShutdownTimeout.
func serve(ctx context.Context, cfg Config, log *slog.Logger, db *postgres.DB, issuer *tokens.Issuer) error {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	dns := &hostnames.DNSVerifier{Store: db, Resolver: hostnames.NewResolver(cfg.DNSResolver), Interval: cfg.HostnameCheckInterval, Logger: log}
	srv, err := api.New(api.Config{GatewayWSURL: cfg.GatewayWSURL, GatewayURL: cfg.GatewayURL, GatewayCA: cfg.GatewayCA, K8sAPIDomain: cfg.K8sAPIDomain, APIURL: cfg.APIURL,
		RevocationCheckInterval: cfg.RevocationCheckInterval},
		api.Deps{Clusters: db, Routes: db, Tokens: db, Hostnames: db, DNS: dns, Issuer: issuer, DB: db, Logger: log, Registry: reg})
	if err != nil {
		return err
	}
	if cfg.Ownership.TrustUnverified {
		log.Warn("HOSTNAME_VERIFICATION=off: every cluster's custom domains route without a DNS challenge; only overlaps with other clusters are refused")
	}
	l, err := net.Listen("tcp", cfg.ListenAddr)
	if err != nil {
		return fmt.Errorf("listen on LISTEN_ADDR=%s: %w", cfg.ListenAddr, err)
	}
	hs := &http.Server{Handler: srv.Handler(), ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}

	reaperCtx, stopReaper := context.WithCancel(context.Background())
	reaperDone := make(chan struct{})
	go func() {
		defer close(reaperDone)
		db.RunReaper(reaperCtx, cfg.ReaperInterval, log)
	}()
	defer func() { stopReaper(); <-reaperDone }()
	dnsDone := make(chan struct{})
	go func() {
		defer close(dnsDone)
		dns.Run(reaperCtx)
	}()
	defer func() { stopReaper(); <-dnsDone }()
	revocationsDone := make(chan struct{})
	go func() {
		defer close(revocationsDone)
		srv.Run(reaperCtx) // re-checks the registration sockets' tokens
	}()
	defer func() { stopReaper(); <-revocationsDone }()

	errc := make(chan error, 1)
	go func() {
		scheme := "http"
		var err error
		if cfg.TLSCertFile != "" {
			scheme = "https"
			log.Info("control plane listening", "addr", l.Addr().String(), "scheme", scheme, "gateway_ws_url", cfg.GatewayWSURL)
			err = hs.ServeTLS(l, cfg.TLSCertFile, cfg.TLSKeyFile)
		} else {
			log.Info("control plane listening", "addr", l.Addr().String(), "scheme", scheme, "gateway_ws_url", cfg.GatewayWSURL)
			err = hs.Serve(l)
		}
		errc <- err
	}()
	select {
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	log.Info("shutting down: draining requests", "timeout", cfg.ShutdownTimeout)
	sctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()
	if err := hs.Shutdown(sctx); err != nil {
		log.Warn("drain cut short; closing", "err", err)
		hs.Close()
	}
	srv.Close() // agent sockets: hijacked, so Shutdown does not see them
	<-errc
	return nil
}
