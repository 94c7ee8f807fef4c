package suite

import (
	"fmt"
	"time"
)

// Profile is how big and how long each scenario runs.
type Profile struct {
	Name string

	// Slice is the time a path gets in one round of an interleaved
	// scenario (OpenSlice for small-open, whose open loop needs longer).
	Slice, OpenSlice time.Duration

	// bulk-single: one download of BulkBytes per path and round.
	BulkBytes  int64
	BulkRounds int
	// bulk-parallel: ParallelDownloads at once of ParallelBytes each.
	ParallelDownloads int
	ParallelBytes     int64

	// small-closed: SmallConns keep-alive connections for SmallWindow
	// (after Warmup), 1 KiB responses.
	SmallConns  int
	SmallWindow time.Duration
	Warmup      time.Duration
	// unloaded: one connection for UnloadedWindow.
	UnloadedWindow time.Duration
	// small-open: OpenRate requests per second for OpenWindow.
	OpenRate   float64
	OpenWindow time.Duration

	// streams: Streams idle WebSockets held at once through one agent.
	Streams int

	// open-rate: ConnWorkers each making a new connection per request for
	// ConnWindow.
	ConnWorkers int
	ConnWindow  time.Duration

	// agents: Agents simulated agents heartbeating every Heartbeat; gateway
	// CPU measured over CPUWindow.
	Agents    int
	Heartbeat time.Duration
	CPUWindow time.Duration

	// wan: the link profiles (shared/testenv/netbed) measured one after
	// the other, each figure over WANWindow, median of WANRounds.
	WANLinks  []string
	WANWindow time.Duration
	WANRounds int
}

// Profiles: full is the measurement (under 10 minutes on 2 cores), ci the
// same scenarios scaled down to stay under 3 minutes with the stack's start.
var (
	Full = Profile{
		Name:  "full",
		Slice: time.Second, OpenSlice: 3 * time.Second,
		BulkBytes: 1 << 30, BulkRounds: 3,
		ParallelDownloads: 8, ParallelBytes: 256 << 20,
		SmallConns: 32, SmallWindow: 15 * time.Second, Warmup: time.Second,
		UnloadedWindow: 5 * time.Second,
		OpenRate:       2000, OpenWindow: 15 * time.Second,
		Streams:     10_000,
		ConnWorkers: 32, ConnWindow: 8 * time.Second,
		Agents: 1000, Heartbeat: 5 * time.Second, CPUWindow: 10 * time.Second,
		WANLinks: []string{"lan", "region", "continent", "bad"}, WANWindow: 5 * time.Second, WANRounds: 3,
	}
	CI = Profile{
		Name:  "ci",
		Slice: time.Second, OpenSlice: 2500 * time.Millisecond,
		BulkBytes: 256 << 20, BulkRounds: 3,
		ParallelDownloads: 8, ParallelBytes: 32 << 20,
		SmallConns: 32, SmallWindow: 5 * time.Second, Warmup: 500 * time.Millisecond,
		UnloadedWindow: 3 * time.Second,
		OpenRate:       1000, OpenWindow: 5 * time.Second,
		Streams:     2000,
		ConnWorkers: 32, ConnWindow: 3 * time.Second,
		Agents: 200, Heartbeat: 5 * time.Second, CPUWindow: 5 * time.Second,
		WANLinks: []string{"region", "continent"}, WANWindow: 2 * time.Second, WANRounds: 2,
	}
)

// ProfileByName returns the named profile.
func ProfileByName(name string) (Profile, error) {
	switch name {
	case Full.Name:
		return Full, nil
	case CI.Name:
		return CI, nil
	}
	return Profile{}, fmt.Errorf("unknown profile %q (full or ci)", name)
}
