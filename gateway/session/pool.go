package session

import (
	"context"
	"net/http/httptrace"
	"sync"
	"sync/atomic"
)

// PoolState follows a connection an http.Transport pools (a tunnel stream,
// or a peer gateway's link to one): whether it carries a request or waits
// idle in the pool, so that it can be retired when its agent drains. An
// idle connection is closed at once, which takes it out of the pool; a busy
// one finishes its request and is closed when it is put back. Requests are
// never cut.
//
// A Transport tells it only through the trace of TracePool, so a request
// must carry that trace for its connection to be retired when idle.
// Safe for concurrent use.
type PoolState struct {
	close func() error

	mu      sync.Mutex
	uses    uint64 // requests that took it, so a late "put back" of an old one is known
	idle    bool
	retired bool
	closed  bool
}

// NewPoolState returns the state of a connection that close closes.
func NewPoolState(close func() error) *PoolState { return &PoolState{close: close} }

// pooled is a connection with a PoolState.
type pooled interface{ PoolState() *PoolState }

// taken records that a request took the connection, and returns the use.
func (p *PoolState) taken() uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.uses++
	p.idle = false
	return p.uses
}

// returned records that use ended with the connection put back in the
// pool; an older use than the last is ignored (the Transport handed the
// connection straight to a waiting request, which may have taken it first).
func (p *PoolState) returned(use uint64) {
	p.mu.Lock()
	if use != p.uses || p.closed {
		p.mu.Unlock()
		return
	}
	p.idle = true
	closeNow := p.retired
	p.closed = p.closed || closeNow
	p.mu.Unlock()
	if closeNow {
		_ = p.close()
	}
}

// Retire closes the connection now if idle, else once its request ends.
func (p *PoolState) Retire() {
	p.mu.Lock()
	p.retired = true
	closeNow := p.idle && !p.closed
	p.closed = p.closed || closeNow
	p.mu.Unlock()
	if closeNow {
		_ = p.close()
	}
}

// TracePool returns ctx with a trace that tells the connections a
// Transport takes for the request whether they are busy or back in the
// pool (see PoolState). The proxy puts it on every request it sends over
// tunnel streams.
func TracePool(ctx context.Context) context.Context {
	var (
		state atomic.Pointer[PoolState]
		use   atomic.Uint64
	)
	return httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		GotConn: func(info httptrace.GotConnInfo) {
			if p, ok := info.Conn.(pooled); ok {
				st := p.PoolState()
				use.Store(st.taken())
				state.Store(st)
			}
		},
		PutIdleConn: func(err error) {
			if st := state.Load(); st != nil && err == nil {
				st.returned(use.Load())
			}
		},
	})
}
