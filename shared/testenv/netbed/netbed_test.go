package netbed

import (
	"context"
	"errors"
	"io"
	"math"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pipeops/tunnel/shared/testenv"
)

func TestMain(m *testing.M) { testenv.MainNoLeaks(m, nil) }

// pair makes two hosts, a and b, joined by a link of profile p.
func pair(t *testing.T, p Profile) (a, b *Host, l *Link) {
	t.Helper()
	return NewPair(t, "a", "b", p)
}

func addrPort(a netip.Addr, port int) string {
	return netip.AddrPortFrom(a, uint16(port)).String()
}

// udpEcho answers every datagram on b's side of l with itself, until the
// test ends; it returns the address to send to.
func udpEcho(t *testing.T, b *Host, l *Link) string {
	t.Helper()
	pc, err := b.ListenPacket("udp4", addrPort(l.AddrB, 0))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo(buf[:n], from)
		}
	}()
	t.Cleanup(func() { pc.Close(); <-done })
	return pc.LocalAddr().String()
}

// TestRoundTrip pings across a link of each profile (a UDP echo, as ping's
// ICMP echo would be) and checks the median round trip: never below the
// profile's, and not far above it.
func TestRoundTrip(t *testing.T) {
	for _, p := range Profiles() {
		t.Run(p.Name, func(t *testing.T) {
			t.Parallel()
			a, b, l := pair(t, p)
			echo := udpEcho(t, b, l)
			c, err := a.DialContext(context.Background(), "udp4", echo)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			var rtts []time.Duration
			buf := make([]byte, 64)
			for i := 0; i < 25; i++ {
				start := time.Now()
				if _, err := c.Write([]byte{byte(i)}); err != nil {
					t.Fatal(err)
				}
				_ = c.SetReadDeadline(start.Add(p.RTT + time.Second))
				n, err := c.Read(buf)
				if err != nil {
					continue // lost on a lossy profile
				}
				if n != 1 || buf[0] != byte(i) {
					t.Fatalf("ping %d answered with %v", i, buf[:n])
				}
				rtts = append(rtts, time.Since(start))
			}
			if len(rtts) < 20 {
				t.Fatalf("%d of 25 pings answered on %v", len(rtts), p)
			}
			slices.Sort(rtts)
			median := rtts[len(rtts)/2]
			t.Logf("%v: median RTT %v, min %v, max %v", p, median, rtts[0], rtts[len(rtts)-1])
			if median < p.RTT {
				t.Errorf("median RTT %v below the profile's %v", median, p.RTT)
			}
			// Jitter adds up to 2x Jitter; the rest is this process's
			// scheduling on a busy machine.
			if limit := p.RTT + 2*p.Jitter + 5*time.Millisecond; median > limit {
				t.Errorf("median RTT %v above %v", median, limit)
			}
		})
	}
}

// transfer sends for d from a to b over TCP and returns bytes per second.
func transfer(t *testing.T, a, b *Host, l *Link, d time.Duration, rcvbuf int) float64 {
	t.Helper()
	ln, err := b.Listen("tcp4", addrPort(l.AddrB, 0))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type result struct {
		n   int64
		dur time.Duration
		err error
	}
	got := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- result{err: err}
			return
		}
		defer c.Close()
		if rcvbuf > 0 {
			_ = c.(*net.TCPConn).SetReadBuffer(rcvbuf)
		}
		// Count from the first byte: the handshake is not throughput.
		var first [1]byte
		if _, err := io.ReadFull(c, first[:]); err != nil {
			got <- result{err: err}
			return
		}
		start := time.Now()
		n, err := io.Copy(io.Discard, c)
		got <- result{n: n + 1, dur: time.Since(start), err: err}
	}()
	c, err := a.DialContext(context.Background(), "tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64<<10)
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if _, err := c.Write(buf); err != nil {
			t.Fatal(err)
		}
	}
	c.Close()
	r := <-got
	if r.err != nil {
		t.Fatal(r.err)
	}
	return float64(r.n) / r.dur.Seconds()
}

// TestThroughput sends over TCP for a few seconds: at the profile's rate
// when the rate is the limit, and at about a window per round trip when the
// receiver's buffer is (the bandwidth-delay product).
func TestThroughput(t *testing.T) {
	t.Run("rate", func(t *testing.T) {
		p := Profile{Name: "rate", RTT: 20 * time.Millisecond, Rate: 40_000_000}
		a, b, l := pair(t, p)
		bps := transfer(t, a, b, l, 3*time.Second, 0) * 8
		t.Logf("%v: %.1f Mbit/s over TCP", p, bps/1e6)
		if bps > float64(p.Rate)*1.02 || bps < float64(p.Rate)*0.7 {
			t.Errorf("TCP moved %.1f Mbit/s over a %d Mbit/s link", bps/1e6, p.Rate/1e6)
		}
		if s := l.Stats(a); s.Packets == 0 {
			t.Errorf("no packets counted: %+v", s)
		}
	})
	t.Run("capacity", func(t *testing.T) {
		// What the emulator itself carries: the ceiling of every figure
		// measured over an unlimited link.
		a, b, l := pair(t, LAN)
		got := transfer(t, a, b, l, 2*time.Second, 0)
		t.Logf("%v: %.0f MB/s over TCP", LAN, got/1e6)
		if got < 25e6 {
			t.Errorf("the emulator carries %.1f MB/s; the wan scenario needs more than 25 MB/s (200 Mbit/s)", got/1e6)
		}
	})
	t.Run("window", func(t *testing.T) {
		p := Profile{Name: "window", RTT: 40 * time.Millisecond}
		a, b, l := pair(t, p)
		const rcvbuf = 128 << 10
		got := transfer(t, a, b, l, 3*time.Second, rcvbuf)
		bdp := float64(rcvbuf) / p.RTT.Seconds() // a full window per round trip
		t.Logf("%v, receive buffer %d KiB: %.2f MB/s; window/RTT %.2f MB/s", p, rcvbuf>>10, got/1e6, bdp/1e6)
		// The kernel doubles SO_RCVBUF and keeps part of it for its own
		// bookkeeping, so the window is between half and twice the buffer.
		if got > 2*bdp || got < bdp/4 {
			t.Errorf("%.2f MB/s with a %d KiB window over %v; window/RTT is %.2f MB/s", got/1e6, rcvbuf>>10, p.RTT, bdp/1e6)
		}
	})
}

// TestLoss sends datagrams over a lossy link and counts what arrives: the
// loss must be the profile's, within the binomial distribution's spread.
func TestLoss(t *testing.T) {
	p := Profile{Name: "lossy", RTT: time.Millisecond, Loss: 0.05}
	a, b, l := pair(t, p)
	pc, err := b.ListenPacket("udp4", addrPort(l.AddrB, 0))
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	c, err := a.DialContext(context.Background(), "udp4", pc.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const sent = 4000
	// Read as they come, so that no datagram is lost to a full socket
	// buffer rather than to the link.
	counted := make(chan int, 1)
	go func() {
		received := 0
		buf := make([]byte, 16)
		for {
			_ = pc.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
			if _, _, err := pc.ReadFrom(buf); err != nil {
				counted <- received
				return
			}
			received++
		}
	}()
	for i := 0; i < sent; i++ {
		if _, err := c.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		if i%20 == 19 {
			time.Sleep(time.Millisecond)
		}
	}
	received := <-counted
	mean := sent * p.Loss
	sd := math.Sqrt(sent * p.Loss * (1 - p.Loss))
	lost := sent - received
	stats := l.Stats(a)
	t.Logf("%d of %d lost (expected %.0f ± %.0f); link: %+v", lost, sent, mean, sd, stats)
	if math.Abs(float64(lost)-mean) > 5*sd {
		t.Errorf("lost %d of %d; a %.0f%% loss gives %.0f ± %.0f", lost, sent, p.Loss*100, mean, 5*sd)
	}
	if stats.Lost != int64(lost) {
		t.Errorf("the link counted %d lost, the receiver missed %d", stats.Lost, lost)
	}
}

// TestBlackhole cuts a TCP connection's link without a reset: the reader
// sees nothing (no error but its own deadline), and the connection carries
// on when the link returns.
func TestBlackhole(t *testing.T) {
	a, b, l := pair(t, Profile{Name: "lan", RTT: time.Millisecond})
	ln, err := b.Listen("tcp4", addrPort(l.AddrB, 0))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_, _ = io.Copy(c, c)
	}()
	c, err := a.DialContext(context.Background(), "tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	roundTrip := func(msg string, wait time.Duration) error {
		if _, err := c.Write([]byte(msg)); err != nil {
			return err
		}
		_ = c.SetReadDeadline(time.Now().Add(wait))
		buf := make([]byte, len(msg))
		if _, err := io.ReadFull(c, buf); err != nil {
			return err
		}
		if string(buf) != msg {
			t.Fatalf("echo %q, want %q", buf, msg)
		}
		return nil
	}
	if err := roundTrip("before", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	l.Blackhole(true)
	err = roundTrip("during", time.Second)
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("through a blackholed link: %v, want the read deadline (no reset, no data)", err)
	}
	if s := l.Stats(a); s.Blackholed == 0 {
		t.Errorf("no packet counted as blackholed: %+v", s)
	}
	l.Blackhole(false)
	// TCP retransmits what the blackhole ate: "during" arrives, then more.
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, len("during"))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "during" {
		t.Fatalf("after the blackhole: %q, %v", buf, err)
	}
	if err := roundTrip("after", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	c.Close()
	<-done
}

// TestIsolation checks that hosts only reach each other over their links:
// a host's loopback is its own, and the machine's is out of reach.
func TestIsolation(t *testing.T) {
	a, b, l := pair(t, LAN)
	outside, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer outside.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if c, err := a.DialContext(ctx, "tcp4", outside.Addr().String()); err == nil {
		c.Close()
		t.Fatal("a host reached the machine's loopback")
	} else if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("dial the machine's loopback from a host: %v, want connection refused", err)
	}
	out, err := b.Command(ctx, "ip", "-4", "-o", "addr").CombinedOutput()
	if err != nil {
		t.Fatalf("ip addr in host b: %v: %s", err, out)
	}
	if !strings.Contains(string(out), l.AddrB.String()+"/30") || strings.Contains(string(out), l.AddrA.String()+"/") {
		t.Errorf("host b's addresses:\n%s\nwant %s/30 and not %s", out, l.AddrB, l.AddrA)
	}
}

// TestSysctl sets a sysctl in one host and not in the other.
func TestSysctl(t *testing.T) {
	a, b, _ := pair(t, LAN)
	const name = "net.ipv4.tcp_syn_retries"
	read := func(h *Host) string {
		var v []byte
		if err := h.Do(func() (err error) { v, err = os.ReadFile("/proc/sys/net/ipv4/tcp_syn_retries"); return err }); err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(v))
	}
	before := read(b)
	if err := a.Sysctl(name, "3"); err != nil {
		t.Fatal(err)
	}
	if got := read(a); got != "3" {
		t.Errorf("%s in a = %s, want 3", name, got)
	}
	if got := read(b); got != before {
		t.Errorf("%s in b = %s, want it untouched (%s)", name, got, before)
	}
	if err := a.Sysctl("kernel.hostname", "x"); err == nil {
		t.Error("Sysctl set a sysctl outside net.")
	}
}

// TestClose checks that a closed bed leaves no namespace behind.
func TestClose(t *testing.T) {
	bed, err := Open()
	testenv.Require(t, "network namespaces", err)
	a, err := bed.AddHost("a")
	if err != nil {
		t.Fatal(err)
	}
	b, err := bed.AddHost("b")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bed.Connect(a, b, Region); err != nil {
		t.Fatal(err)
	}
	if err := bed.Close(); err != nil {
		t.Fatal(err)
	}
	for _, h := range []*Host{a, b} {
		if _, err := os.Stat(netnsDir + "/" + h.NS); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("namespace %s after Close: %v", h.NS, err)
		}
	}
	if _, err := bed.AddHost("c"); err == nil {
		t.Error("a closed bed made a host")
	}
}

func TestProfiles(t *testing.T) {
	for _, p := range Profiles() {
		if err := p.Validate(); err != nil {
			t.Error(err)
		}
		got, err := ProfileByName(p.Name)
		if err != nil || got != p {
			t.Errorf("ProfileByName(%q) = %v, %v", p.Name, got, err)
		}
	}
	if _, err := ProfileByName("moon"); err == nil || !strings.Contains(err.Error(), "known: bad, continent, lan, region") {
		t.Errorf("unknown profile: %v", err)
	}
	for _, bad := range []Profile{{Loss: 1}, {Loss: -0.1}, {RTT: -1}, {Rate: 100}} {
		if err := bad.Validate(); err == nil {
			t.Errorf("%+v validated", bad)
		}
	}
}

// TestHostAddress dials a host at its own address over the link: the
// connection comes from the dialler's own address, and it crosses the link.
func TestHostAddress(t *testing.T) {
	a, b, l := pair(t, Profile{Name: "5ms", RTT: 5 * time.Millisecond})
	ln, err := b.Listen("tcp4", addrPort(b.Addr, 0))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	remote := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			remote <- err.Error()
			return
		}
		remote <- c.RemoteAddr().(*net.TCPAddr).IP.String()
		c.Close()
	}()
	before := l.Stats(a).Packets
	start := time.Now()
	c, err := a.DialContext(context.Background(), "tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	c.Close()
	if got := <-remote; got != a.Addr.String() {
		t.Errorf("b saw the connection come from %s, want a's address %s", got, a.Addr)
	}
	if took < 5*time.Millisecond {
		t.Errorf("connected in %v, less than the link's round trip", took)
	}
	if l.Stats(a).Packets == before {
		t.Error("the connection did not cross the link")
	}
}

// TestForward reaches a host's server from outside the bed through a
// Forwarder, half-closes included, and Close ends what is open.
func TestForward(t *testing.T) {
	_, b, _ := pair(t, LAN)
	ln, err := b.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	served := make(chan struct{})
	go func() {
		defer close(served)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			data, _ := io.ReadAll(c) // until the client's half close
			_, _ = c.Write(append([]byte("got "), data...))
			c.Close()
		}
	}()
	outside, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	target := ln.Addr().String()
	f := Forward(outside, func(ctx context.Context) (net.Conn, error) { return b.DialContext(ctx, "tcp4", target) })
	c, err := net.Dial("tcp4", f.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	_ = c.(*net.TCPConn).CloseWrite()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "got ping" {
		t.Fatalf("through the forwarder: %q, %v", got, err)
	}
	c.Close()

	held, err := net.Dial("tcp4", f.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	_, _ = held.Write([]byte("x"))
	time.Sleep(50 * time.Millisecond) // let the forwarder dial through
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	_ = held.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := held.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("a held connection after Close: %v, want it closed", err)
	}
	ln.Close()
	<-served
}
