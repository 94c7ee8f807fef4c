// Package netbed is a test bed of hosts joined by emulated network links:
// each host is a Linux network namespace, each link a pair of TUN devices
// (one in each host) and goroutines of this process that carry IP packets
// between them with a profile's delay, jitter, loss and rate. TCP over such a
// link sees a real round trip and real loss, which a byte-stream delay proxy
// (which buffers and acknowledges for it) would hide, and which the kernels
// these tests run on cannot give: they have no netem qdisc.
//
// It needs root (to make namespaces and TUN devices) and iproute2's ip. Where
// those are missing, Open returns an error wrapping testenv.ErrUnavailable,
// and New skips the test, or fails it in CI.
//
// Addresses come from 198.18.0.0/15, the range set aside for benchmarks
// (RFC 2544), and exist only inside the bed's namespaces: nothing a bed does
// reaches the machine's own network. Each host has an address of its own
// (Host.Addr, from 198.19.0.0/16, on its loopback), which its neighbours
// reach over the link between them; each link has a /30 from 198.18.0.0/16. Namespaces are named
// pbed-PID-N-HOST; a bed removes those of processes that have died before it
// makes its own, so a test killed halfway leaves nothing behind for long.
package netbed

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/pipeops/tunnel/shared/testenv"
)

// netnsDir is where ip netns keeps its named namespaces.
const netnsDir = "/run/netns"

var (
	beds  atomic.Int64
	stale = regexp.MustCompile(`^pbed-([0-9]+)-`)
	// linkBase and hostBase split the benchmark range: links' /30s from
	// the first half, hosts' own addresses from the second.
	linkBase = netip.MustParseAddr("198.18.0.0")
	hostBase = netip.MustParseAddr("198.19.0.0")
)

// Bed owns hosts and links; Close removes them all. Its methods are safe for
// concurrent use.
type Bed struct {
	prefix string

	mu     sync.Mutex
	hosts  []*Host
	links  []*Link
	nlinks int
	nhosts int
	closed bool
}

// Open checks that namespaces and TUN devices can be made here, removes
// what beds of dead processes left, and returns an empty bed.
func Open() (*Bed, error) {
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("netbed needs root to make network namespaces: %w", testenv.ErrUnavailable)
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return nil, fmt.Errorf("netbed needs iproute2's ip (apt-get install iproute2): %w", testenv.ErrUnavailable)
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		return nil, fmt.Errorf("netbed needs /dev/net/tun: %v: %w", err, testenv.ErrUnavailable)
	}
	removeStale()
	return &Bed{prefix: fmt.Sprintf("pbed-%d-%d", os.Getpid(), beds.Add(1))}, nil
}

// New opens a bed that closes when t ends; where there can be none, t is
// skipped, or failed in CI (testenv.Require).
func New(t testing.TB) *Bed {
	t.Helper()
	b, err := Open()
	testenv.Require(t, "network namespaces", err)
	t.Cleanup(func() {
		if err := b.Close(); err != nil {
			t.Errorf("close the test bed: %v", err)
		}
	})
	return b
}

// removeStale deletes the namespaces of beds whose process is gone.
func removeStale() {
	entries, err := os.ReadDir(netnsDir)
	if err != nil {
		return
	}
	for _, e := range entries {
		m := stale.FindStringSubmatch(e.Name())
		if m == nil {
			continue
		}
		pid, err := strconv.Atoi(m[1])
		if err != nil || pid == os.Getpid() {
			continue
		}
		if err := unix.Kill(pid, 0); errors.Is(err, unix.ESRCH) {
			_ = ip("netns", "delete", e.Name())
		}
	}
}

// Host is one machine of the bed: a network namespace with its loopback up,
// an address of its own, and one address per link.
type Host struct {
	// Name is the name the bed was given; NS the namespace's (for ip netns).
	Name, NS string
	// Addr is the host's own address: its neighbours reach it there over
	// the link between them, and its connections to them come from there.
	Addr netip.Addr
}

// AddHost makes a host.
func (b *Bed) AddHost(name string) (*Host, error) {
	if name == "" || strings.ContainsAny(name, "/ \t\n") {
		return nil, fmt.Errorf("netbed: bad host name %q", name)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil, errors.New("netbed: the bed is closed")
	}
	if b.nhosts >= 1<<16-2 {
		return nil, errors.New("netbed: out of host addresses")
	}
	b.nhosts++
	h := &Host{Name: name, NS: b.prefix + "-" + name,
		Addr: addrOf(binary.BigEndian.Uint32(hostBase.AsSlice()) + uint32(b.nhosts))}
	if err := ip("netns", "add", h.NS); err != nil {
		return nil, fmt.Errorf("netbed: add host %s: %w", name, err)
	}
	b.hosts = append(b.hosts, h)
	for _, args := range [][]string{
		{"-n", h.NS, "link", "set", "lo", "up"},
		{"-n", h.NS, "addr", "add", netip.PrefixFrom(h.Addr, 32).String(), "dev", "lo"},
	} {
		if err := ip(args...); err != nil {
			return nil, fmt.Errorf("netbed: host %s: %w", name, err)
		}
	}
	return h, nil
}

// Connect joins a and b with a link of profile p: from then on each
// reaches the other's Addr over it.
func (b *Bed) Connect(a, c *Host, p Profile) (*Link, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	if a == c {
		return nil, errors.New("netbed: a link joins two different hosts")
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil, errors.New("netbed: the bed is closed")
	}
	n := b.nlinks
	if n >= 1<<15 {
		return nil, errors.New("netbed: out of link addresses")
	}
	b.nlinks++
	base := binary.BigEndian.Uint32(linkBase.AsSlice()) + uint32(4*n)
	l := &Link{A: a, B: c, AddrA: addrOf(base + 1), AddrB: addrOf(base + 2)}

	var id [4]byte
	_, _ = rand.Read(id[:])
	devA, devB := "nb"+hex.EncodeToString(id[:])+"a", "nb"+hex.EncodeToString(id[:])+"b"
	fa, err := attachTUN(devA, a, l.AddrA, c.Addr)
	if err != nil {
		return nil, fmt.Errorf("netbed: link %s-%s: %w", a.Name, c.Name, err)
	}
	fb, err := attachTUN(devB, c, l.AddrB, a.Addr)
	if err != nil {
		fa.Close()
		return nil, fmt.Errorf("netbed: link %s-%s: %w", a.Name, c.Name, err)
	}
	seed := uint64(n)*2 + 1
	if l.ab, err = newDirection(fa, fb, p, seed); err == nil {
		if l.ba, err = newDirection(fb, fa, p, seed+1); err != nil {
			l.ab.timer.Close()
		}
	}
	if err != nil {
		fa.Close()
		fb.Close()
		return nil, err
	}
	for _, d := range []*direction{l.ab, l.ba} {
		l.wg.Add(2)
		go func() { defer l.wg.Done(); d.read() }()
		go func() { defer l.wg.Done(); d.write(); d.timer.Close() }()
	}
	b.links = append(b.links, l)
	return l, nil
}

// addrOf is the IPv4 address v.
func addrOf(v uint32) netip.Addr {
	var a [4]byte
	binary.BigEndian.PutUint32(a[:], v)
	return netip.AddrFrom4(a)
}

// attachTUN makes a TUN device here and moves it into h with addr/30 and a
// route to the peer host's own address.
func attachTUN(dev string, h *Host, addr, peer netip.Addr) (*os.File, error) {
	f, err := openTUN(dev)
	if err != nil {
		return nil, err
	}
	for _, args := range [][]string{
		{"link", "set", "dev", dev, "netns", h.NS},
		{"-n", h.NS, "addr", "add", netip.PrefixFrom(addr, 30).String(), "dev", dev},
		{"-n", h.NS, "link", "set", "dev", dev, "mtu", strconv.Itoa(mtu), "up"},
		{"-n", h.NS, "route", "add", netip.PrefixFrom(peer, 32).String(), "dev", dev, "src", h.Addr.String()},
	} {
		if err := ip(args...); err != nil {
			f.Close()
			return nil, err
		}
	}
	return f, nil
}

// Pair makes two hosts, named a and c, joined by a link of profile p: the
// shape of most beds (an agent and its gateway, a client and its server).
func (b *Bed) Pair(a, c string, p Profile) (*Host, *Host, *Link, error) {
	ha, err := b.AddHost(a)
	if err != nil {
		return nil, nil, nil, err
	}
	hc, err := b.AddHost(c)
	if err != nil {
		return nil, nil, nil, err
	}
	l, err := b.Connect(ha, hc, p)
	if err != nil {
		return nil, nil, nil, err
	}
	return ha, hc, l, nil
}

// NewPair is New and Pair for a test, which it fails on an error.
func NewPair(t testing.TB, a, c string, p Profile) (*Host, *Host, *Link) {
	t.Helper()
	ha, hc, l, err := New(t).Pair(a, c, p)
	if err != nil {
		t.Fatal(err)
	}
	return ha, hc, l
}

// Close stops every link and removes every host.
func (b *Bed) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil
	}
	b.closed = true
	var errs []error
	for _, l := range b.links {
		errs = append(errs, l.Close())
	}
	for _, h := range b.hosts {
		if err := ip("netns", "delete", h.NS); err != nil {
			errs = append(errs, fmt.Errorf("netbed: remove host %s: %w", h.Name, err))
		}
	}
	return errors.Join(errs...)
}

// Do runs fn on a thread that has entered h's namespace. Sockets fn makes
// belong to h for their whole life, whichever goroutine uses them later;
// fn must not start goroutines that make sockets of their own.
func (h *Host) Do(fn func() error) error {
	target, err := os.Open(netnsDir + "/" + h.NS)
	if err != nil {
		return fmt.Errorf("netbed: host %s: %w", h.Name, err)
	}
	defer target.Close()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		own, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("netbed: own namespace: %w", err)
			return
		}
		defer own.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("netbed: enter host %s: %w", h.Name, err)
			return
		}
		ferr := fn()
		if err := unix.Setns(int(own.Fd()), unix.CLONE_NEWNET); err != nil {
			// The thread stays locked, so it ends with this goroutine
			// and never runs other code in the wrong namespace.
			errc <- errors.Join(ferr, fmt.Errorf("netbed: leave host %s: %w", h.Name, err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// Listen listens in h's namespace.
func (h *Host) Listen(network, addr string) (net.Listener, error) {
	var l net.Listener
	err := h.Do(func() (err error) { l, err = net.Listen(network, addr); return err })
	return l, err
}

// ListenPacket listens for packets in h's namespace.
func (h *Host) ListenPacket(network, addr string) (net.PacketConn, error) {
	var c net.PacketConn
	err := h.Do(func() (err error) { c, err = net.ListenPacket(network, addr); return err })
	return c, err
}

// DialContext dials from h's namespace; it fits http.Transport.DialContext.
func (h *Host) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := h.Do(func() (err error) {
		var d net.Dialer
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// Sysctl sets a network sysctl of h's own (name as in sysctl(8), e.g.
// net.ipv4.tcp_syn_linear_timeouts): a host can run with another kernel's
// defaults than the machine's.
func (h *Host) Sysctl(name, value string) error {
	if !strings.HasPrefix(name, "net.") || strings.Contains(name, "/") {
		return fmt.Errorf("netbed: %q is not a network sysctl", name)
	}
	path := "/proc/sys/" + strings.ReplaceAll(name, ".", "/")
	err := h.Do(func() error { return os.WriteFile(path, []byte(value), 0o644) })
	if err != nil {
		return fmt.Errorf("netbed: host %s: sysctl %s=%s: %w", h.Name, name, value, err)
	}
	return nil
}

// Command returns a command that runs in h's namespace (through ip netns
// exec), killed when ctx ends.
func (h *Host) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", h.NS, name}, args...)...)
}

func ip(args ...string) error {
	var out bytes.Buffer
	cmd := exec.Command("ip", args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return nil
}
