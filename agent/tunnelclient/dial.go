package tunnelclient

import (
	"context"
	"net"
	"sync"
	"time"
)

// Connection attempts to the gateway overlap while they go unanswered: a new
// one starts every dialStagger, the oldest is given up when dialParallel are
// pending, and the first to connect wins. A link that drops every packet (a
// NAT that lost its state, a silent outage) leaves a lone attempt waiting out
// SYN retransmits whose gaps grow (1, 2, 4, 8 s), so the agent would only
// see that the link is back seconds later; with overlapping attempts a SYN
// leaves every dialStagger, and the agent is back within about that of the
// link's return. A refused connection fails at once and is not repeated
// here: the retry loop's backoff paces those.
const (
	dialStagger  = 500 * time.Millisecond
	dialParallel = 4
)

// staggeredDial dials address with dial, starting another attempt every
// stagger while none has answered and giving up the oldest beyond parallel.
// It returns the first connection (any other that connects is closed) or,
// once every attempt failed and none is pending, the last error. It waits
// for all its attempts before returning.
func staggeredDial(ctx context.Context, dial func(ctx context.Context, network, address string) (net.Conn, error), network, address string, stagger time.Duration, parallel int) (net.Conn, error) {
	type result struct {
		c         net.Conn
		err       error
		abandoned bool // given up for a newer attempt
	}
	results := make(chan result, 1)
	var wg sync.WaitGroup
	var cancels []context.CancelFunc // of the attempts, oldest first
	pending := 0
	start := func() {
		actx, cancel := context.WithCancel(ctx)
		cancels = append(cancels, cancel)
		pending++
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := dial(actx, network, address)
			results <- result{c, err, actx.Err() != nil && ctx.Err() == nil}
		}()
	}
	// finish ends every attempt, closes what connected after c, and waits.
	finish := func(c net.Conn) {
		for _, cancel := range cancels {
			cancel()
		}
		for ; pending > 0; pending-- {
			if r := <-results; r.c != nil {
				r.c.Close()
			}
		}
		wg.Wait()
	}
	tick := time.NewTicker(stagger)
	defer tick.Stop()
	start()
	var lastErr error
	for {
		select {
		case r := <-results:
			pending--
			if r.err == nil {
				finish(r.c)
				return r.c, nil
			}
			if !r.abandoned {
				lastErr = r.err
			}
			if pending == 0 && lastErr != nil {
				finish(nil)
				return nil, lastErr
			}
		case <-tick.C:
			if pending >= parallel {
				cancels[0]() // the oldest: its next SYN is the furthest off
				cancels = cancels[1:]
			}
			start()
		case <-ctx.Done():
			finish(nil)
			return nil, ctx.Err()
		}
	}
}
