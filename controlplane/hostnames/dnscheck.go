package hostnames

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"time"

	"github.com/pipeops/tunnel/controlplane"
)

// Defaults of DNSVerifier.
const (
	DefaultCheckInterval = time.Minute
	DefaultCheckTimeout  = 5 * time.Second
	// DefaultCheckBatch bounds the claims checked per round, so that a
	// flood of unverifiable claims costs one bounded round a minute.
	DefaultCheckBatch = 100
)

// ErrNoRecord means the challenge's TXT record is missing or holds another
// value.
var ErrNoRecord = errors.New("challenge TXT record not found")

// NewResolver returns a resolver that asks the DNS server at addr
// (host:port) only, or the system's resolver when addr is empty.
func NewResolver(addr string) *net.Resolver {
	if addr == "" {
		return net.DefaultResolver
	}
	return &net.Resolver{
		PreferGo: true,
		Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		},
	}
}

// DNSVerifier proves custom domains: a pending claim is verified once the
// TXT record at its ChallengeName holds its challenge value. Run checks the
// pending claims every Interval; Check checks one at once (the API's
// "verify now"). Set the fields before use; safe for concurrent use.
type DNSVerifier struct {
	Store    controlplane.HostnameStore // required
	Resolver *net.Resolver              // default: the system's
	Interval time.Duration              // default DefaultCheckInterval
	Timeout  time.Duration              // per look-up; default DefaultCheckTimeout
	Batch    int                        // claims per round; default DefaultCheckBatch
	Logger   *slog.Logger               // nil discards
}

// Check looks up h's challenge and, when it is there, marks h verified. It
// returns nil when verified, an error wrapping ErrNoRecord (and records the
// finding) when the record is not there yet, or the store's error.
func (v *DNSVerifier) Check(ctx context.Context, h controlplane.Hostname) error {
	if h.Verified {
		return nil
	}
	err := v.lookup(ctx, h)
	if err != nil {
		if rerr := v.Store.RecordHostnameCheck(ctx, h.ClusterUUID, h.Hostname, err.Error()); rerr != nil {
			return fmt.Errorf("record the check of %s: %w", h.Hostname, rerr)
		}
		return err
	}
	if err := v.Store.VerifyHostname(ctx, h.ClusterUUID, h.Hostname, "dns txt record"); err != nil {
		return err
	}
	v.logger().Info("hostname verified by its DNS TXT record", "hostname", h.Hostname, "cluster", h.ClusterUUID, "record", h.TXTName)
	return nil
}

func (v *DNSVerifier) lookup(ctx context.Context, h controlplane.Hostname) error {
	if h.TXTName == "" || h.TXTValue == "" {
		return fmt.Errorf("%s has no challenge to check", h.Hostname)
	}
	timeout := v.Timeout
	if timeout <= 0 {
		timeout = DefaultCheckTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	r := v.Resolver
	if r == nil {
		r = net.DefaultResolver
	}
	txts, err := r.LookupTXT(ctx, h.TXTName)
	if err != nil {
		var dnsErr *net.DNSError
		if errors.As(err, &dnsErr) && dnsErr.IsNotFound {
			return fmt.Errorf("%w: no TXT record at %s", ErrNoRecord, h.TXTName)
		}
		return fmt.Errorf("look up TXT %s: %w", h.TXTName, err)
	}
	// A TXT record's strings are joined, as DNS providers split long values.
	if slices.ContainsFunc(txts, func(t string) bool { return strings.TrimSpace(t) == h.TXTValue }) {
		return nil
	}
	return fmt.Errorf("%w: %s holds %d TXT record(s), none with this cluster's challenge value", ErrNoRecord, h.TXTName, len(txts))
}

// Run checks the pending claims now and every Interval until ctx ends. It
// blocks; the caller owns the goroutine.
func (v *DNSVerifier) Run(ctx context.Context) {
	interval := v.Interval
	if interval <= 0 {
		interval = DefaultCheckInterval
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		v.round(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (v *DNSVerifier) round(ctx context.Context) {
	batch := v.Batch
	if batch <= 0 {
		batch = DefaultCheckBatch
	}
	pending, err := v.Store.PendingHostnames(ctx, batch)
	if err != nil {
		if ctx.Err() == nil {
			v.logger().Warn("list hostnames pending verification", "err", err)
		}
		return
	}
	failed := 0
	for _, h := range pending {
		if ctx.Err() != nil {
			return
		}
		err := v.Check(ctx, h)
		switch {
		case err == nil, errors.Is(err, ErrNoRecord):
		case controlplane.ErrorCode(err) == controlplane.ECONFLICT:
			v.logger().Info("hostname cannot be verified: another cluster holds it", "hostname", h.Hostname, "cluster", h.ClusterUUID, "err", err)
		default:
			failed++
		}
	}
	if failed > 0 {
		// One line a round, however many failed: a resolver outage must not
		// flood the log.
		v.logger().Warn("DNS checks of pending hostnames failed", "failed", failed, "checked", len(pending))
	}
}

func (v *DNSVerifier) logger() *slog.Logger {
	if v.Logger != nil {
		return v.Logger
	}
	return slog.New(slog.DiscardHandler)
}
