package tunnel

import (
	"bytes"
	"encoding/binary"
	"slices"
	"testing"
)

// FuzzCoalesceFrames drives CoalesceFrames two ways with the same input.
// First as a byte stream cut into writes of any size (cuts gives the sizes):
// every Write reports all of its bytes taken, and every byte goes out once,
// in order, except the part of a data frame still waiting for its body.
// Then as yamux writes: a sequence of frames read from data, each written as
// its 12-byte header followed by its body in pieces; every frame must then
// go out as exactly one message, and nothing be left waiting. Last, the
// same frames with stream resets asked for between the pieces (where a cut
// has its top bit set): each reset goes out as one message of its own,
// never inside a frame, and the frames go out as before around them.
func FuzzCoalesceFrames(f *testing.F) {
	// TestCoalesceFrames's cases: the writes joined, and their sizes.
	for _, writes := range [][][]byte{
		{muxHeader(0, 1, 5), []byte("hello")},
		{muxHeader(0, 1, 5), []byte("he"), []byte("llo")},
		{muxHeader(1, 1, 5)},
		{muxHeader(2, 0, 7)},
		{muxHeader(0, 3, 0)},
		{append(muxHeader(0, 1, 2), "hi"...)},
		{muxHeader(0, 1, 2), append([]byte("hi"), muxHeader(1, 1, 9)...)},
	} {
		var data, cuts []byte
		for _, w := range writes {
			data = append(data, w...)
			cuts = append(cuts, byte(len(w)))
		}
		f.Add(data, cuts)
	}
	f.Add([]byte{0, 5, 'h', 'e', 'l', 'l', 'o', 1, 9, 0, 0, 2, 3}, []byte{2, 0, 3})

	f.Fuzz(func(t *testing.T, data, cuts []byte) {
		checkCoalescedStream(t, data, cuts)
		checkCoalescedFrames(t, data, cuts, false)
		checkCoalescedFrames(t, data, cuts, true)
	})
}

// coalescedWrite writes p to c in one call, which must take all of it.
func coalescedWrite(t *testing.T, c *FrameConn, p []byte) {
	t.Helper()
	if n, err := c.Write(p); n != len(p) || err != nil {
		t.Fatalf("Write(%d bytes) = %d, %v", len(p), n, err)
	}
}

func checkCoalescedStream(t *testing.T, data, cuts []byte) {
	rec := &recordConn{}
	c := CoalesceFrames(rec)
	rest := data
	for _, cut := range cuts {
		n := min(int(cut)&0x3f, len(rest))
		coalescedWrite(t, c, rest[:n])
		rest = rest[n:]
	}
	if len(rest) > 0 {
		coalescedWrite(t, c, rest)
	}
	out := bytes.Join(rec.writes, nil)
	var pending []byte
	if c.need > 0 {
		pending = c.buf
		if len(pending) < muxHeaderSize || pending[1] != muxTypeData ||
			int(binary.BigEndian.Uint32(pending[8:12])) != len(pending)-muxHeaderSize+c.need {
			t.Fatalf("waiting on % x for %d more bytes: not a data frame's start", pending, c.need)
		}
	}
	if got := append(out, pending...); !bytes.Equal(got, data) {
		t.Fatalf("wrote\n% x\nwith\n% x waiting; was given\n% x", out, pending, data)
	}
}

func checkCoalescedFrames(t *testing.T, data, cuts []byte, resets bool) {
	rec := &recordConn{}
	c := CoalesceFrames(rec)
	var want [][]byte
	piece := 0
	resetAt := func(i int) bool { return resets && len(cuts) > 0 && cuts[i%len(cuts)]&0x80 != 0 }
	var asked []uint32 // the streams reset, in order
	for i := 0; i+1 < len(data); {
		typ, length := data[i]%4, int(data[i+1])
		i += 2
		var body []byte
		if typ == muxTypeData {
			length = min(length, len(data)-i)
			body = data[i : i+length]
			i += length
		}
		hdr := muxHeader(typ, uint32(len(want)+1), uint32(length))
		want = append(want, append(hdr[:len(hdr):len(hdr)], body...))
		coalescedWrite(t, c, hdr)
		for len(body) > 0 {
			n := len(body)
			if len(cuts) > 0 {
				n = min(max(int(cuts[piece%len(cuts)]), 1), n)
				piece++
			}
			if resetAt(piece) {
				id := uint32(1_000_000 + len(asked)) // no frame of the sequence has it
				asked = append(asked, id)
				c.ResetStream(id, len(asked)%2 == 0)
			}
			coalescedWrite(t, c, body[:n])
			body = body[n:]
		}
	}
	if c.need != 0 {
		t.Fatalf("%d body bytes still awaited after whole frames", c.need)
	}
	var got [][]byte
	var reset []uint32
	for _, w := range rec.writes {
		if len(w) == muxHeaderSize && w[1] == muxTypeWindowUpdate && binary.BigEndian.Uint16(w[2:4]) == muxFlagRST &&
			binary.BigEndian.Uint32(w[4:8]) >= 1_000_000 {
			reset = append(reset, binary.BigEndian.Uint32(w[4:8]))
			continue
		}
		got = append(got, w)
	}
	if !slices.Equal(reset, asked) {
		t.Fatalf("resets of streams %v went out as %v", asked, reset)
	}
	rec.writes = got
	if len(rec.writes) != len(want) {
		t.Fatalf("%d frames went out as %d messages", len(want), len(rec.writes))
	}
	for i := range want {
		if !bytes.Equal(rec.writes[i], want[i]) {
			t.Fatalf("message %d is\n% x\nwant frame\n% x", i, rec.writes[i], want[i])
		}
	}
}
