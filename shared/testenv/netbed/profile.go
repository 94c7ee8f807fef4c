package netbed

import (
	"fmt"
	"sort"
	"strings"
	"time"
)

// Profile is what one emulated link does to the packets it carries, the same
// in both directions: each direction adds half of RTT, up to Jitter more
// (without reordering), drops Loss of its packets at random, and sends at
// most Rate bits per second with Queue bytes of buffer before it drops the
// tail. The zero Rate is no limit; the zero Queue is 100 ms at Rate.
type Profile struct {
	Name   string
	RTT    time.Duration
	Jitter time.Duration
	// Loss is the probability in [0, 1) that a packet is lost, per
	// direction.
	Loss float64
	// Rate is the link's rate in bits per second; 0 is unlimited (then the
	// emulator's own speed is the limit).
	Rate  int64
	Queue int
}

// The profiles the test bed's links are named after: where agents, gateways
// and visitors really sit from each other.
var (
	// LAN is two machines in one data centre.
	LAN = Profile{Name: "lan", RTT: 200 * time.Microsecond}
	// Region is two data centres in one region, or a good home line.
	Region = Profile{Name: "region", RTT: 20 * time.Millisecond, Jitter: 500 * time.Microsecond}
	// Continent is across a continent or an ocean, with a little loss.
	Continent = Profile{Name: "continent", RTT: 80 * time.Millisecond, Jitter: time.Millisecond, Loss: 0.001}
	// Bad is a poor mobile or satellite line.
	Bad = Profile{Name: "bad", RTT: 200 * time.Millisecond, Jitter: 5 * time.Millisecond, Loss: 0.01, Rate: 10_000_000}
)

// Profiles returns the named profiles, fastest first.
func Profiles() []Profile { return []Profile{LAN, Region, Continent, Bad} }

// ProfileByName returns the named profile.
func ProfileByName(name string) (Profile, error) {
	var names []string
	for _, p := range Profiles() {
		if p.Name == name {
			return p, nil
		}
		names = append(names, p.Name)
	}
	sort.Strings(names)
	return Profile{}, fmt.Errorf("netbed: no link profile %q (known: %s)", name, strings.Join(names, ", "))
}

// Validate reports a profile that no link can have.
func (p Profile) Validate() error {
	switch {
	case p.RTT < 0 || p.Jitter < 0:
		return fmt.Errorf("netbed: profile %q: RTT and Jitter must not be negative", p.Name)
	case p.Loss < 0 || p.Loss >= 1:
		return fmt.Errorf("netbed: profile %q: Loss %v is not in [0, 1)", p.Name, p.Loss)
	case p.Rate < 0 || p.Queue < 0:
		return fmt.Errorf("netbed: profile %q: Rate and Queue must not be negative", p.Name)
	case p.Rate > 0 && p.Rate < 8*mtu:
		return fmt.Errorf("netbed: profile %q: Rate %d bit/s is below one packet a second", p.Name, p.Rate)
	}
	return nil
}

// queueBytes is the buffer in front of a rate limit.
func (p Profile) queueBytes() int {
	if p.Queue > 0 {
		return p.Queue
	}
	q := int(p.Rate / 8 / 10) // 100 ms at Rate
	return max(q, 4*mtu)
}

func (p Profile) String() string {
	s := fmt.Sprintf("%s (RTT %v", p.Name, p.RTT)
	if p.Jitter > 0 {
		s += fmt.Sprintf(", jitter %v", p.Jitter)
	}
	if p.Loss > 0 {
		s += fmt.Sprintf(", loss %.2g%%", p.Loss*100)
	}
	if p.Rate > 0 {
		s += fmt.Sprintf(", %g Mbit/s", float64(p.Rate)/1e6)
	}
	return s + ")"
}
