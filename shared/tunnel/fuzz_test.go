package tunnel

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"testing"

	"github.com/pipeops/tunnel/shared/tunnel/pipeopsfixtures"
)

// headerSentinels are the errors a header decoder may report for bad input.
var headerSentinels = []error{
	ErrUnsupportedVersion, ErrUnknownProtocol, ErrHeaderStringTooLong,
	ErrShortHeader, ErrTrailingBytes, ErrInvalidHeader,
}

func headerSentinel(err error) error {
	for _, s := range headerSentinels {
		if errors.Is(err, s) {
			return s
		}
	}
	return nil
}

func addHeaderSeeds(f *testing.F) {
	for _, tt := range validHeaders {
		enc := mustMarshal(f, tt.h)
		f.Add(enc)
		f.Add(append(enc[:len(enc):len(enc)], "payload"...))
		f.Add(enc[:len(enc)/2])
	}
	for _, tt := range badHeaders {
		f.Add(tt.in)
	}
	f.Add([]byte{})
}

func FuzzReadStreamHeader(f *testing.F) {
	addHeaderSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		h, err := ReadStreamHeader(r)
		consumed := len(data) - r.Len()
		if consumed > headerMaxLen {
			t.Fatalf("consumed %d bytes, more than any header (%d)", consumed, headerMaxLen)
		}
		if err != nil {
			if h != (StreamHeader{}) {
				t.Fatalf("returned %+v together with error %v", h, err)
			}
			if len(data) == 0 {
				if err != io.EOF {
					t.Fatalf("empty input: error = %v, want io.EOF", err)
				}
				return
			}
			if headerSentinel(err) == nil {
				t.Fatalf("error %v matches no sentinel", err)
			}
			var u StreamHeader
			if uerr := u.UnmarshalBinary(data); uerr == nil {
				t.Fatalf("ReadStreamHeader failed (%v) where UnmarshalBinary succeeded", err)
			} else if headerSentinel(uerr) != headerSentinel(err) {
				t.Fatalf("decoders disagree: ReadStreamHeader %v, UnmarshalBinary %v", err, uerr)
			}
			return
		}
		if err := h.Validate(); err != nil {
			t.Fatalf("decoded header %+v does not validate: %v", h, err)
		}
		// The encoding is canonical, so the consumed bytes must be exactly
		// what re-encoding produces.
		enc, err := h.MarshalBinary()
		if err != nil {
			t.Fatalf("re-encoding %+v: %v", h, err)
		}
		if !bytes.Equal(enc, data[:consumed]) {
			t.Fatalf("consumed\n% x\nre-encoded\n% x", data[:consumed], enc)
		}
		again, err := ReadStreamHeader(bytes.NewReader(enc))
		if err != nil || again != h {
			t.Fatalf("decoding the re-encoding = %+v, %v; want %+v", again, err, h)
		}
	})
}

func FuzzUnmarshalStreamHeader(f *testing.F) {
	addHeaderSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		orig := StreamHeader{Protocol: 7, Service: "untouched"}
		h := orig
		err := h.UnmarshalBinary(data)
		if err != nil {
			if h != orig {
				t.Fatalf("changed the header to %+v on error %v", h, err)
			}
			if headerSentinel(err) == nil {
				t.Fatalf("error %v matches no sentinel", err)
			}
			return
		}
		enc, err := h.MarshalBinary()
		if err != nil {
			t.Fatalf("re-encoding %+v: %v", h, err)
		}
		if !bytes.Equal(enc, data) {
			t.Fatalf("input\n% x\nre-encoded\n% x", data, enc)
		}
		var again StreamHeader
		if err := again.UnmarshalBinary(enc); err != nil || again != h {
			t.Fatalf("decoding the re-encoding = %+v, %v; want %+v", again, err, h)
		}
		r := bytes.NewReader(data)
		if got, err := ReadStreamHeader(r); err != nil || got != h || r.Len() != 0 {
			t.Fatalf("ReadStreamHeader = %+v, %v with %d bytes left; want %+v", got, err, r.Len(), h)
		}
	})
}

// fuzzPayloadTypes are the payload types DecodeMessage's output is decoded
// into, whatever the message type says.
var fuzzPayloadTypes = []func() any{
	func() any { return new(Register) },
	func() any { return new(RegisterSuccess) },
	func() any { return new(ErrorPayload) },
	func() any { return new(GatewayHello) },
	func() any { return new(Heartbeat) },
	func() any { return new(HeartbeatAck) },
	func() any { return new(Ping) },
	func() any { return new(Pong) },
	func() any { return new(Usage) },
	func() any { return new(GatewayHelloAck) },
	func() any { return new(ProxyRequest) },
	func() any { return new(ProxyRequestChunk) },
	func() any { return new(ProxyResponse) },
	func() any { return new(ProxyResponseHeader) },
	func() any { return new(ProxyResponseChunk) },
	func() any { return new(ProxyFailure) },
	func() any { return new(Empty) },
	func() any { return new(WSStart) },
	func() any { return new(WSData) },
	func() any { return new(WSClose) },
	func() any { return new(TCPTunnelStart) },
	func() any { return new(TCPTunnelData) },
	func() any { return new(TCPTunnelClose) },
	func() any { return new(UDPTunnelData) },
	func() any { return new(Backpressure) },
	func() any { return new(ProtocolFallback) },
}

func FuzzDecodeMessage(f *testing.F) {
	for _, tt := range hostedSamples {
		f.Add([]byte(tt.json))
	}
	for _, fx := range pipeopsfixtures.All() {
		f.Add(fx.JSON)
	}
	for _, tt := range badMessages {
		f.Add([]byte(tt.in))
	}
	for _, tt := range payloadCases {
		m, err := NewMessage(tt.typ, tt.payload)
		if err != nil {
			f.Fatal(err)
		}
		enc, err := m.Encode()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(enc)
	}
	for _, u := range []string{`12.5`, `"unavailable"`, `null`, `"12.5"`, `"garbage"`} {
		f.Add([]byte(`{"type":"heartbeat","payload":{"metadata":{"cpu_usage":` + u + `}}}`))
		f.Add([]byte(`{"type":"usage","payload":` + u + `}`))
	}

	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := DecodeMessage(data)
		if err != nil {
			if !errors.Is(err, ErrMalformedMessage) && !errors.Is(err, ErrMissingType) && !errors.Is(err, ErrMessageTooLarge) {
				t.Fatalf("error %v matches no sentinel", err)
			}
			return
		}
		_ = m.String()

		enc, err := m.Encode()
		if errors.Is(err, ErrMessageTooLarge) {
			return // escaping can grow a message that was just under the limit
		}
		if err != nil {
			t.Fatalf("re-encoding %v: %v", m, err)
		}
		m2, err := DecodeMessage(enc)
		if err != nil {
			t.Fatalf("decoding the re-encoding %s: %v", enc, err)
		}
		if m2.Type != m.Type || m2.RequestID != m.RequestID || !m2.Timestamp.Equal(m.Timestamp) || (m.Payload == nil) != (m2.Payload == nil) {
			t.Fatalf("round trip changed the envelope: %#v became %#v", m, m2)
		}
		// Encoding normalises the payload's spacing, so compare encodings.
		enc2, err := m2.Encode()
		if err != nil || !bytes.Equal(enc, enc2) {
			t.Fatalf("second encoding = %s, %v; first was %s", enc2, err, enc)
		}

		for _, newPtr := range fuzzPayloadTypes {
			v := newPtr()
			if err := m.DecodePayload(v); err != nil {
				if !errors.Is(err, ErrMalformedMessage) {
					t.Fatalf("DecodePayload(%T) error %v is not ErrMalformedMessage", v, err)
				}
				continue
			}
			raw, err := json.Marshal(v)
			if err != nil {
				t.Fatalf("re-encoding %T %+v: %v", v, v, err)
			}
			again := newPtr()
			if err := (Message{Type: m.Type, Payload: raw}).DecodePayload(again); err != nil {
				t.Fatalf("decoding re-encoded %T %s: %v", v, raw, err)
			}
			// Compared by encoding: an empty map and a nil one are the same
			// payload (omitempty drops both) but not reflect.DeepEqual.
			raw2, err := json.Marshal(again)
			if err != nil || !bytes.Equal(raw, raw2) {
				t.Fatalf("%T round trip: %s became %s (%v)", v, raw, raw2, err)
			}
		}
	})
}
