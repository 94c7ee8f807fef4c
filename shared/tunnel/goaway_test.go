package tunnel

import (
	"bytes"
	"encoding/binary"
	"io"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
)

// TestPeerGoAway runs yamux over a real WebSocket with both ends watching
// for the other's go-away, with data flowing: each end hears of the other's
// go-away once, and only then.
func TestPeerGoAway(t *testing.T) {
	cc, sc := wsPair(t)
	clientOut, serverOut := CoalesceFrames(cc), CoalesceFrames(sc)
	var clientHeard, serverHeard atomic.Int32
	clientOut.OnPeerGoAway(func() { clientHeard.Add(1) })
	serverOut.OnPeerGoAway(func() { serverHeard.Add(1) })
	cfg, err := MuxConfig(DefaultYamuxConfig(), nil)
	if err != nil {
		t.Fatal(err)
	}
	client, err := yamux.Client(clientOut, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server, err := yamux.Server(serverOut, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()

	// Bodies that look like go-away headers must not count.
	body := bytes.Repeat([]byte{0, muxTypeGoAway, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, 100_000)
	st, err := server.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	go func() { st.Write(body); st.Close() }()
	got, err := client.AcceptStream()
	if err != nil {
		t.Fatal(err)
	}
	if b, err := io.ReadAll(got); err != nil || !bytes.Equal(b, body) {
		t.Fatalf("stream: %d bytes, %v", len(b), err)
	}
	got.Close()
	if clientHeard.Load() != 0 || serverHeard.Load() != 0 {
		t.Fatalf("go-away heard before any was sent: client %d, server %d", clientHeard.Load(), serverHeard.Load())
	}
	if err := client.GoAway(); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the server hearing the client's go-away", func() bool { return serverHeard.Load() == 1 })
	if err := server.GoAway(); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the client hearing the server's go-away", func() bool { return clientHeard.Load() == 1 })
	time.Sleep(50 * time.Millisecond)
	if clientHeard.Load() != 1 || serverHeard.Load() != 1 {
		t.Fatalf("go-aways heard: client %d, server %d; want 1 each", clientHeard.Load(), serverHeard.Load())
	}
}

func waitUntil(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// goAwaysIn counts the go-away frames of a whole yamux byte stream, the
// plain way: the reference the watcher is held to.
func goAwaysIn(b []byte) int {
	n := 0
	for len(b) >= muxHeaderSize {
		typ, length := b[1], binary.BigEndian.Uint32(b[8:12])
		b = b[muxHeaderSize:]
		switch typ {
		case muxTypeGoAway:
			n++
		case muxTypeData:
			if uint64(length) >= uint64(len(b)) {
				return n
			}
			b = b[length:]
		}
	}
	return n
}

// FuzzFrameWatcher feeds the watcher any bytes, cut into pieces anywhere:
// it never panics and counts exactly the go-aways the whole stream holds.
func FuzzFrameWatcher(f *testing.F) {
	goAway := []byte{0, muxTypeGoAway, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	data := []byte{0, muxTypeData, 0, 0, 0, 0, 0, 1, 0, 0, 0, 12}
	f.Add(append(append(append([]byte{}, data...), goAway...), goAway...), uint16(5))
	f.Add(goAway, uint16(1))
	f.Add([]byte{0, 1, 0, 2, 0, 0, 0, 3, 0, 0, 1, 0}, uint16(7))
	f.Fuzz(func(t *testing.T, stream []byte, cut uint16) {
		heard := 0
		w := &frameWatcher{onGoAway: func() { heard++ }}
		step := int(cut)%17 + 1
		for b := stream; len(b) > 0; {
			n := min(step, len(b))
			w.observe(b[:n])
			b = b[n:]
			step = step*7%23 + 1
		}
		if want := goAwaysIn(stream); heard != want {
			t.Fatalf("heard %d go-aways, the stream holds %d", heard, want)
		}
	})
}
