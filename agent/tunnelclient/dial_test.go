package tunnelclient

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/pipeops/tunnel/shared/testenv/netbed"
)

// TestStaggeredDialBlackhole dials across a link that drops every packet,
// then brings the link back: the connection must come within about one
// stagger of the link's return, not after the next SYN retransmit of a
// lone attempt (seconds, growing), even with the oldest attempts given up.
func TestStaggeredDialBlackhole(t *testing.T) {
	agent, gateway, link := netbed.NewPair(t, "agent", "gateway", netbed.Region)
	// SYN retransmits as most kernels in the field space them: 1, 2, 4, 8
	// s. (Since Linux 6.5 the first four may come a second apart.)
	if err := agent.Sysctl("net.ipv4.tcp_syn_linear_timeouts", "0"); err != nil {
		t.Fatal(err)
	}
	ln, err := gateway.Listen("tcp4", netip.AddrPortFrom(gateway.Addr, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()

	link.Blackhole(true)
	var attempts atomic.Int32
	dial := func(ctx context.Context, network, address string) (net.Conn, error) {
		attempts.Add(1)
		return agent.DialContext(ctx, network, address)
	}
	type result struct {
		c   net.Conn
		err error
		at  time.Time
	}
	done := make(chan result, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	go func() {
		c, err := staggeredDial(ctx, dial, "tcp4", ln.Addr().String(), 500*time.Millisecond, 4)
		done <- result{c, err, time.Now()}
	}()
	// Long enough for a lone attempt's SYN retransmits to space out.
	time.Sleep(8500 * time.Millisecond) // between the SYNs at 7 and 15 s
	back := time.Now()
	link.Blackhole(false)
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	r.c.Close()
	took := r.at.Sub(back)
	t.Logf("connected %v after the link came back, %d attempts", took.Round(time.Millisecond), attempts.Load())
	if took > 1500*time.Millisecond {
		t.Errorf("connected %v after the link came back; want about one stagger (500 ms) and a round trip", took)
	}
	// One every 500 ms over 8.5 s, give or take the scheduler.
	if n := attempts.Load(); n < 12 || n > 20 {
		t.Errorf("%d attempts; want one every 500 ms while unanswered", n)
	}
}

// TestStaggeredDialRefused fails at once with the dial's error when the
// target refuses: no overlapping attempts pile up.
func TestStaggeredDialRefused(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	var attempts atomic.Int32
	var d net.Dialer
	dial := func(ctx context.Context, network, address string) (net.Conn, error) {
		attempts.Add(1)
		return d.DialContext(ctx, network, address)
	}
	start := time.Now()
	_, err = staggeredDial(context.Background(), dial, "tcp", addr, 500*time.Millisecond, 8)
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial a closed port: %v, want connection refused", err)
	}
	if n := attempts.Load(); n != 1 || time.Since(start) > 400*time.Millisecond {
		t.Errorf("%d attempts in %v; want one, at once", n, time.Since(start))
	}
}

// TestStaggeredDialCancel returns when the context ends, with every
// attempt ended (the package's leak check would see one that was not).
func TestStaggeredDialCancel(t *testing.T) {
	dial := func(ctx context.Context, _, _ string) (net.Conn, error) {
		<-ctx.Done() // a SYN that is never answered
		return nil, ctx.Err()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 1200*time.Millisecond)
	defer cancel()
	_, err := staggeredDial(ctx, dial, "tcp", "192.0.2.1:443", 100*time.Millisecond, 4)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("staggeredDial after its context ended: %v", err)
	}
}
