// Package cli is the pipeops-controlplane command: serve, migrate, and the
// admin subcommands that work on the database directly (so the first
// cluster and the first admin token can be made before anyone has a token).
//
// Every subcommand checks its arguments before it reads the configuration
// or opens the database, so a mistake costs no connection and leaves
// nothing half done; --help, --version and completion read neither.
package cli

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"

	"github.com/pipeops/tunnel/controlplane/api"
	"github.com/pipeops/tunnel/controlplane/console"
	"github.com/pipeops/tunnel/controlplane/hostnames"
	"github.com/pipeops/tunnel/controlplane/postgres"
	"github.com/pipeops/tunnel/controlplane/tokens"
	"github.com/pipeops/tunnel/shared/cmdline"
)

// Run runs the command line args (without the program name) and returns the
// exit code: 0 success, 1 failure, 2 a usage or configuration error (see
// package cmdline). When ctx ends, serve drains for SHUTDOWN_TIMEOUT.
// Confirmations (cluster delete) are read from the process's standard
// input, and only when it is a terminal.
func Run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	r := &runner{getenv: getenv, stdin: os.Stdin, stdout: stdout, stderr: stderr}
	return r.execute(ctx, args)
}

func (r *runner) execute(ctx context.Context, args []string) int {
	return cmdline.Execute(ctx, r.command(), args, r.stdout, r.stderr)
}

// runner is what every subcommand runs with.
type runner struct {
	getenv         func(string) string
	stdin          io.Reader // answers to confirmations; see isTerminal
	stdout, stderr io.Writer
}

func (r *runner) command() *cobra.Command {
	root := cmdline.NewRoot("pipeops-controlplane", "Route store, cluster registry and token service",
		`pipeops-controlplane is the control plane: it keeps clusters, routes and tokens in
PostgreSQL, signs the tokens everybody authenticates with, registers agents and
takes their route syncs. 'serve' runs it; the other commands work on the database
directly, so the first cluster and the first admin token need nothing else.

Configuration comes from the environment (below). The signing keys are stored
sealed under a key-encryption key (KEK), KEY_ENCRYPTION_KEY_FILE, which every
command but migrate, keys list, keys retire and audit list needs.`)
	root.Example = `  pipeops-controlplane serve
  pipeops-controlplane cluster create NAME
  pipeops-controlplane cluster list -o wide
  pipeops-controlplane token create --kind user --user alice --group dev --cluster NAME
  pipeops-controlplane kubeconfig NAME --user alice > alice.kubeconfig
  pipeops-controlplane route list --cluster NAME -o yaml`
	cmdline.Group(root,
		r.serveCommand(),
		r.migrateCommand(),
		r.clusterCommand(),
		r.tokenCommand(),
		r.kubeconfigCommand(),
		r.routeCommand(),
		r.hostnameCommand(),
		r.domainCommand(),
		r.auditCommand(),
		r.keysCommand(),
	)
	cmdline.ShowSettings(root, Settings)
	return root
}

// config loads the configuration; a problem is a configuration error
// (exit 2).
func (r *runner) config() (Config, error) {
	cfg, err := LoadConfig(r.getenv)
	if err != nil {
		return cfg, cmdline.ConfigError(err)
	}
	return cfg, nil
}

func (r *runner) logger(cfg Config) *slog.Logger {
	opts := &slog.HandlerOptions{Level: cfg.LogLevel}
	if cfg.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(r.stderr, opts))
	}
	return slog.New(slog.NewTextHandler(r.stderr, opts))
}

// session is an open, migrated database and what goes with it.
type session struct {
	cfg     Config
	log     *slog.Logger
	db      *postgres.DB
	issuer  *tokens.Issuer // nil unless asked for
	applied []string       // the migrations applied when it was opened
}

// withDB opens the database with cfg, applies pending migrations (every
// command does, so none meets an old schema) and calls fn.
func (r *runner) withDB(ctx context.Context, cfg Config, fn func(s *session) error) error {
	log := r.logger(cfg)
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
	return fn(&session{cfg: cfg, log: log, db: db, applied: applied})
}

// withIssuer is withDB with the token issuer, which opens the signing
// keys: it needs the KEK (and seals a key it finds stored in plaintext).
func (r *runner) withIssuer(ctx context.Context, cfg Config, fn func(s *session) error) error {
	if err := cfg.RequireKEK(); err != nil {
		return err
	}
	return r.withDB(ctx, cfg, func(s *session) error {
		issuer, err := tokens.NewIssuer(ctx, s.db, s.db, tokens.Options{KEK: cfg.KEK, Logger: s.log, AdminUser: cfg.AdminUser, AdminGroups: cfg.AdminGroups})
		if err != nil {
			return kekHint(err)
		}
		s.issuer = issuer
		return fn(s)
	})
}

// configured loads the configuration and runs fn with the database and
// the issuer: what every command but migrate, keys and audit does, so that
// each of them needs the KEK and seals a key left in plaintext.
func (r *runner) configured(ctx context.Context, fn func(s *session) error) error {
	cfg, err := r.config()
	if err != nil {
		return err
	}
	return r.withIssuer(ctx, cfg, fn)
}

func (r *runner) serveCommand() *cobra.Command {
	c := &cobra.Command{
		Use:   "serve",
		Short: "Run the API (applies pending migrations first)",
		Long: `Run the API: agent registration, route syncs, the admin API, the JWKS. Pending
migrations are applied first, and the token signing key is made on the first
start. The first SIGINT/SIGTERM drains requests for up to SHUTDOWN_TIMEOUT; a
second one exits at once. Needs GATEWAY_WS_URL and the KEK.`,
		Args: cmdline.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := r.config()
			if err != nil {
				return err
			}
			if err := cfg.ValidateServe(); err != nil {
				return err
			}
			return r.withIssuer(cmd.Context(), cfg, func(s *session) error { return serve(cmd.Context(), s) })
		},
	}
	cmdline.ShowSettings(c, Settings)
	return c
}

func (r *runner) migrateCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "migrate",
		Short: "Apply pending database migrations and exit",
		Args:  cmdline.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := r.config()
			if err != nil {
				return err
			}
			return r.withDB(cmd.Context(), cfg, func(s *session) error {
				fmt.Fprintf(r.stdout, "database is up to date (%d migrations applied now)\n", len(s.applied))
				return nil
			})
		},
	}
}

// serve runs the API until ctx ends, then drains for ShutdownTimeout.
func serve(ctx context.Context, s *session) error {
	cfg, log, db := s.cfg, s.log, s.db
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	dns := &hostnames.DNSVerifier{Store: db, Resolver: hostnames.NewResolver(cfg.DNSResolver), Interval: cfg.HostnameCheckInterval, Logger: log}
	var ui http.Handler
	if cfg.Console {
		c, err := console.New(console.Config{APIURL: cfg.APIURL, GatewayURL: cfg.GatewayURL, GatewayCA: cfg.GatewayCA, K8sAPIDomain: cfg.K8sAPIDomain,
			GrafanaURL: cfg.GrafanaURL, SessionTTL: cfg.ConsoleSessionTTL,
			TrafficRefresh: cfg.ConsoleTrafficRefresh},
			console.Deps{Clusters: db, Routes: db, Tokens: db, Issuer: s.issuer, Audit: db, Traffic: db, Logger: log.With("part", "console")})
		if err != nil {
			return err
		}
		ui = c.Handler()
	}
	srv, err := api.New(api.Config{GatewayWSURL: cfg.GatewayWSURL, GatewayURL: cfg.GatewayURL, GatewayCA: cfg.GatewayCA, K8sAPIDomain: cfg.K8sAPIDomain, APIURL: cfg.APIURL,
		RevocationCheckInterval: cfg.RevocationCheckInterval},
		api.Deps{Clusters: db, Routes: db, Tokens: db, Hostnames: db, DNS: dns, Issuer: s.issuer, DB: db, Logger: log, Registry: reg,
			Audit: db, Console: ui, Traffic: db})
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
	al, err := net.Listen("tcp", cfg.AdminAddr)
	if err != nil {
		l.Close()
		return fmt.Errorf("listen on ADMIN_ADDR=%s: %w", cfg.AdminAddr, err)
	}
	admin := &http.Server{Handler: srv.AdminHandler(), ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	adminDone := make(chan struct{})
	go func() {
		defer close(adminDone)
		log.Info("control plane admin listening (healthz, readyz, metrics)", "addr", al.Addr().String())
		_ = admin.Serve(al)
	}()
	defer func() {
		_ = admin.Close()
		<-adminDone
	}()

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
