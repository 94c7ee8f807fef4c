package netbed

import (
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// mtu is the links' MTU, Ethernet's: TCP then cuts segments as on a real
// line, and the emulator's rate and loss apply per real-sized packet.
const mtu = 1500

// maxQueued bounds the packets in flight in one direction (sent, not yet
// due): far above any window the tests open over a link, so only a rate
// limit's queue drops, never this bound, in practice.
const maxQueued = 1 << 15

// Link is an emulated point-to-point link between two hosts: a TUN device in
// each host's namespace with one address of a /30, and two goroutines per
// direction that carry the IP packets one device sends to the other with the
// link's profile applied. Its methods are safe for concurrent use; Close
// stops the goroutines and removes both devices.
type Link struct {
	A, B         *Host
	AddrA, AddrB netip.Addr

	ab, ba *direction
	wg     sync.WaitGroup
	once   sync.Once
}

// SetProfile changes the profile of both directions; packets already on the
// way keep the delay they were given.
func (l *Link) SetProfile(p Profile) error {
	if err := p.Validate(); err != nil {
		return err
	}
	l.ab.setProfile(p)
	l.ba.setProfile(p)
	return nil
}

// Blackhole makes the link drop every packet in both directions (on) or
// carry them again (off): a line gone silent, with no reset or error for
// either side to see.
func (l *Link) Blackhole(on bool) {
	l.ab.blackhole.Store(on)
	l.ba.blackhole.Store(on)
}

// LinkStats counts one direction's packets.
type LinkStats struct {
	Packets, Bytes int64 // delivered
	Lost           int64 // dropped at random (Profile.Loss)
	QueueDrops     int64 // dropped at the tail of a full queue
	Blackholed     int64 // dropped while the link was blackholed
}

// Stats returns the counts of the direction from h to its peer.
func (l *Link) Stats(from *Host) LinkStats {
	d := l.ab
	if from == l.B {
		d = l.ba
	}
	return LinkStats{
		Packets:    d.packets.Load(),
		Bytes:      d.bytes.Load(),
		Lost:       d.lost.Load(),
		QueueDrops: d.queueDrops.Load(),
		Blackholed: d.blackholed.Load(),
	}
}

// Close stops carrying packets and removes both devices (closing a TUN
// device's last descriptor removes it). It waits for the link's goroutines.
func (l *Link) Close() error {
	var err error
	l.once.Do(func() {
		err = errors.Join(l.ab.close(), l.ba.close())
		l.wg.Wait()
	})
	return err
}

// direction carries the packets one TUN device sends into the other, with
// a reader that applies loss and rate and stamps each packet with its due
// time, and a writer that holds each one until then.
type direction struct {
	from, to *os.File
	timer    *os.File // timerfd: the writer's waits, precise to microseconds
	queue    chan packet

	mu       sync.Mutex // guards prof, rng, nextFree, lastDue
	prof     Profile
	rng      *rand.Rand
	nextFree time.Time // when the line is free to send the next packet
	lastDue  time.Time // packets are never due before the one in front

	blackhole                                    atomic.Bool
	packets, bytes, lost, queueDrops, blackholed atomic.Int64
}

type packet struct {
	buf *[]byte
	n   int
	due time.Time
}

var bufs = sync.Pool{New: func() any { b := make([]byte, mtu+64); return &b }}

func newDirection(from, to *os.File, p Profile, seed uint64) (*direction, error) {
	fd, err := unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_NONBLOCK|unix.TFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("netbed: timerfd: %w", err)
	}
	return &direction{
		from:  from,
		to:    to,
		timer: os.NewFile(uintptr(fd), "timerfd"),
		queue: make(chan packet, maxQueued),
		prof:  p,
		rng:   rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),
	}, nil
}

func (d *direction) setProfile(p Profile) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.prof = p
}

// schedule decides a packet's fate: its due time, or false when it is lost.
func (d *direction) schedule(n int, now time.Time) (time.Time, bool) {
	if d.blackhole.Load() {
		d.blackholed.Add(1)
		return time.Time{}, false
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	p := d.prof
	if p.Loss > 0 && d.rng.Float64() < p.Loss {
		d.lost.Add(1)
		return time.Time{}, false
	}
	depart := now
	if p.Rate > 0 {
		start := now
		if d.nextFree.After(now) {
			start = d.nextFree
		}
		// Bytes waiting in front of this packet, at Rate.
		waiting := int64(start.Sub(now)) * p.Rate / 8 / int64(time.Second)
		if waiting+int64(n) > int64(p.queueBytes()) {
			d.queueDrops.Add(1)
			return time.Time{}, false
		}
		depart = start.Add(time.Duration(int64(n) * 8 * int64(time.Second) / p.Rate))
		d.nextFree = depart
	}
	due := depart.Add(p.RTT / 2)
	if p.Jitter > 0 {
		due = due.Add(time.Duration(d.rng.Int64N(int64(p.Jitter))))
	}
	if due.Before(d.lastDue) {
		due = d.lastDue
	}
	d.lastDue = due
	return due, true
}

// read runs until the source device closes; it then closes the queue, the
// writer's signal to stop.
func (d *direction) read() {
	defer close(d.queue)
	for {
		buf := bufs.Get().(*[]byte)
		n, err := d.from.Read(*buf)
		if err != nil {
			bufs.Put(buf)
			return
		}
		due, ok := d.schedule(n, time.Now())
		if !ok {
			bufs.Put(buf)
			continue
		}
		select {
		case d.queue <- packet{buf: buf, n: n, due: due}:
		default:
			d.queueDrops.Add(1)
			bufs.Put(buf)
		}
	}
}

// write delivers each packet when it is due, in order.
func (d *direction) write() {
	for p := range d.queue {
		if wait := time.Until(p.due); wait > 0 {
			d.sleep(wait)
		}
		if _, err := d.to.Write((*p.buf)[:p.n]); err == nil {
			d.packets.Add(1)
			d.bytes.Add(int64(p.n))
		}
		bufs.Put(p.buf)
	}
}

// sleep waits on the timerfd: time.Sleep wakes up to a millisecond late on
// Linux, as long as the LAN profile's whole round trip.
func (d *direction) sleep(wait time.Duration) {
	spec := unix.ItimerSpec{Value: unix.NsecToTimespec(int64(wait))}
	if err := unix.TimerfdSettime(int(d.timer.Fd()), 0, &spec, nil); err != nil {
		time.Sleep(wait)
		return
	}
	var b [8]byte
	if _, err := io.ReadFull(d.timer, b[:]); err != nil {
		time.Sleep(wait) // closed under us: the link is closing
	}
}

// close closes the source device (which ends read, and so write). The
// destination device and the timer are closed by the other direction and
// by the writer's owner.
func (d *direction) close() error {
	return d.from.Close()
}

// openTUN creates a TUN device named name in the caller's network namespace
// and returns its descriptor, non-blocking so that Go's poller serves its
// reads and Close interrupts them.
func openTUN(name string) (*os.File, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open /dev/net/tun: %w", err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("tun device name %q: %w", name, err)
	}
	ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("create tun device %s: %w", name, err)
	}
	return os.NewFile(uintptr(fd), "/dev/net/tun:"+name), nil
}
