package session

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/pipeops/tunnel/agent/tunnelclient"
	"github.com/pipeops/tunnel/shared/tunnel"
)

// The benchmarks compare one stream through the whole tunnel path
// (gateway yamux server -> WebSocket over loopback TCP -> agent yamux client
// -> TCP to the target) with plain loopback TCP to the same kind of target,
// in the same run. The target is a sink: it reads until EOF and answers with
// the byte count, so a run measures the full delivery of the data.
//
//	go test -run '^$' -bench . -benchtime 3s ./gateway/session/

const chunk = 32 << 10

func startSink(b testing.TB) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				n, _ := io.Copy(io.Discard, c)
				_ = binary.Write(c, binary.BigEndian, n)
			}()
		}
	}()
	b.Cleanup(func() { l.Close(); wg.Wait() })
	return l.Addr().String()
}

// send writes n chunks, half-closes, and waits for the sink's count.
func send(b *testing.B, c net.Conn, n int) {
	buf := make([]byte, chunk)
	for range n {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	if err := c.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		b.Fatal(err)
	}
	var got int64
	if err := binary.Read(c, binary.BigEndian, &got); err != nil {
		b.Fatal(err)
	}
	if got != int64(n*chunk) {
		b.Fatalf("sink got %d bytes, want %d", got, n*chunk)
	}
}

// benchEnv connects an agent whose every stream goes to target.
func benchEnv(b *testing.B, target string) *Registry {
	e := newEnv(b, false)
	e.startAgent("bench", func(c *tunnelclient.Config) {
		c.Dialer = tunnelclient.DialerFunc(func(ctx context.Context, h tunnel.StreamHeader) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", target)
		})
	})
	e.waitSession("bench", nil)
	return e.reg
}

func BenchmarkRawTCP(b *testing.B) {
	sink := startSink(b)
	b.SetBytes(chunk)
	b.ReportAllocs()
	c, err := net.Dial("tcp", sink)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	b.ResetTimer()
	send(b, c, b.N)
}

func BenchmarkTunnelStream(b *testing.B) {
	reg := benchEnv(b, startSink(b))
	b.SetBytes(chunk)
	b.ReportAllocs()
	c, err := reg.Dial(context.Background(), "bench", echoTarget)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	b.ResetTimer()
	send(b, c, b.N)
}

// BenchmarkTunnelParallel8 runs 8 streams at once over one tunnel.
func BenchmarkTunnelParallel8(b *testing.B) {
	reg := benchEnv(b, startSink(b))
	b.SetBytes(chunk)
	b.ReportAllocs()
	const streams = 8
	per := b.N/streams + 1
	b.ResetTimer()
	var wg sync.WaitGroup
	for range streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := reg.Dial(context.Background(), "bench", echoTarget)
			if err != nil {
				b.Error(err)
				return
			}
			defer c.Close()
			send(b, c, per)
		}()
	}
	wg.Wait()
}

// BenchmarkStreamOpenClose measures a full stream life: open, header, the
// agent's TCP connect to the target, one byte each way, close.
func BenchmarkStreamOpenClose(b *testing.B) {
	reg := benchEnv(b, startEcho(b))
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for range b.N {
		c, err := reg.Dial(context.Background(), "bench", echoTarget)
		if err != nil {
			b.Fatal(err)
		}
		one := []byte{1}
		if _, err := c.Write(one); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, one); err != nil {
			b.Fatal(err)
		}
		c.Close()
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "streams/s")
}

// BenchmarkStreamOpenCloseParallel is the same with 16 streams in flight,
// which is how a busy gateway opens them: the rate is then bound by work,
// not by one stream's round trips.
func BenchmarkStreamOpenCloseParallel(b *testing.B) {
	reg := benchEnv(b, startEcho(b))
	b.ReportAllocs()
	b.SetParallelism(8) // 8 x GOMAXPROCS(2) = 16 goroutines
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		one := make([]byte, 1)
		for pb.Next() {
			c, err := reg.Dial(context.Background(), "bench", echoTarget)
			if err != nil {
				b.Error(err)
				return
			}
			if _, err := c.Write(one); err != nil {
				b.Error(err)
				return
			}
			if _, err := io.ReadFull(c, one); err != nil {
				b.Error(err)
				return
			}
			c.Close()
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "streams/s")
}

// BenchmarkIdleStreamMemory opens streams that stay idle and reports the
// heap and stack they hold, for gateway and agent together (both run in this
// process), targets excluded: the target accepts and holds connections
// without a goroutine.
func BenchmarkIdleStreamMemory(b *testing.B) {
	const n = 2000
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	var held []net.Conn
	var mu sync.Mutex
	acceptDone := make(chan struct{})
	go func() {
		defer close(acceptDone)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c)
			mu.Unlock()
		}
	}()
	defer func() {
		l.Close()
		<-acceptDone
		for _, c := range held {
			c.Close()
		}
	}()
	reg := benchEnv(b, l.Addr().String())
	for range b.N {
		before := memInUse()
		conns := make([]net.Conn, 0, n)
		for range n {
			c, err := reg.Dial(context.Background(), "bench", echoTarget)
			if err != nil {
				b.Fatal(err)
			}
			conns = append(conns, c)
		}
		// Wait until the agent has connected every stream's target.
		for deadline := time.Now().Add(30 * time.Second); ; {
			mu.Lock()
			got := len(held)
			mu.Unlock()
			if got >= n || time.Now().After(deadline) {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		after := memInUse()
		b.ReportMetric(float64(after-before)/n, "B/stream")
		for _, c := range conns {
			c.Close()
		}
		mu.Lock()
		for _, c := range held {
			c.Close()
		}
		held = held[:0]
		mu.Unlock()
	}
}

func memInUse() int64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapInuse + m.StackInuse)
}
