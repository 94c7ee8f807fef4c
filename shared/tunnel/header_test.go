package tunnel

import (
	"bytes"
	"encoding"
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

var (
	_ encoding.BinaryAppender    = StreamHeader{}
	_ encoding.BinaryMarshaler   = StreamHeader{}
	_ encoding.BinaryUnmarshaler = (*StreamHeader)(nil)
)

// rawHeader lays out a header byte by byte without any validation, so tests
// can build both good and bad input independently of the code under test.
func rawHeader(version, proto byte, port uint16, strs ...string) []byte {
	b := []byte{version, proto, byte(port >> 8), byte(port)}
	for _, s := range strs {
		b = append(b, byte(len(s)>>8), byte(len(s)))
		b = append(b, s...)
	}
	return b
}

var validHeaders = []struct {
	name string
	h    StreamHeader
}{
	{"kubernetes API", KubernetesAPI},
	{"ingress controller", StreamHeader{Protocol: ProtocolTCP, Port: 80, Service: "ingress-nginx-controller", Namespace: "ingress-nginx"}},
	{"with tunnel id", StreamHeader{Protocol: ProtocolTCP, Port: 5432, Service: "postgres", Namespace: "db", TunnelID: "tcp-3f2a-db-5432"}},
	{"udp", StreamHeader{Protocol: ProtocolUDP, Port: 53, Service: "kube-dns", Namespace: "kube-system"}},
	{"empty namespace", StreamHeader{Protocol: ProtocolTCP, Port: 1, Service: "s"}},
	{"max port", StreamHeader{Protocol: ProtocolTCP, Port: 65535, Service: "s", Namespace: "n"}},
	{"max-length strings", StreamHeader{
		Protocol:  ProtocolTCP,
		Port:      8080,
		Service:   strings.Repeat("s", MaxHeaderString),
		Namespace: strings.Repeat("n", MaxHeaderString),
		TunnelID:  strings.Repeat("t", MaxHeaderString),
	}},
	{"non-ASCII bytes kept as is", StreamHeader{Protocol: ProtocolTCP, Port: 9, Service: "caf\u00e9", Namespace: "\xff\x00", TunnelID: "\n"}},
}

var badHeaders = []struct {
	name string
	in   []byte
	want error
}{
	{"version 0", rawHeader(0, 1, 443, "kubernetes", "default", ""), ErrUnsupportedVersion},
	{"version 2", rawHeader(2, 1, 443, "kubernetes", "default", ""), ErrUnsupportedVersion},
	{"version 2 alone", []byte{2}, ErrUnsupportedVersion},
	{"protocol 0", rawHeader(1, 0, 443, "kubernetes", "default", ""), ErrUnknownProtocol},
	{"protocol 3", rawHeader(1, 3, 443, "kubernetes", "default", ""), ErrUnknownProtocol},
	{"protocol 3 truncated", []byte{1, 3}, ErrUnknownProtocol},
	{"port 0", rawHeader(1, 1, 0, "kubernetes", "default", ""), ErrInvalidHeader},
	{"empty service", rawHeader(1, 1, 443, "", "default", ""), ErrInvalidHeader},
	{"service too long", rawHeader(1, 1, 443, strings.Repeat("s", MaxHeaderString+1), "default", ""), ErrHeaderStringTooLong},
	{"namespace too long", rawHeader(1, 1, 443, "s", strings.Repeat("n", MaxHeaderString+1), ""), ErrHeaderStringTooLong},
	{"tunnel id too long", rawHeader(1, 1, 443, "s", "n", strings.Repeat("t", MaxHeaderString+1)), ErrHeaderStringTooLong},
	// The length alone must be refused: the bytes it announces never come.
	{"too long, refused before the data", []byte{1, 1, 0x01, 0xbb, 0x04, 0x01}, ErrHeaderStringTooLong},
	{"length 0xffff", []byte{1, 1, 0x01, 0xbb, 0xff, 0xff}, ErrHeaderStringTooLong},
	{"missing tunnel id", rawHeader(1, 1, 443, "kubernetes", "default"), ErrShortHeader},
	{"one byte", []byte{1}, ErrShortHeader},
	{"string cut short", []byte{1, 1, 0x01, 0xbb, 0, 10, 'k', 'u', 'b'}, ErrShortHeader},
}

func mustMarshal(t testing.TB, h StreamHeader) []byte {
	t.Helper()
	b, err := h.MarshalBinary()
	if err != nil {
		t.Fatalf("MarshalBinary(%v): %v", h, err)
	}
	return b
}

func TestStreamHeaderGolden(t *testing.T) {
	tests := []struct {
		name string
		h    StreamHeader
		want []byte
	}{
		{
			name: "kubernetes API",
			h:    KubernetesAPI,
			want: []byte{
				0x01,       // version
				0x01,       // tcp
				0x01, 0xbb, // port 443
				0x00, 0x0a, 'k', 'u', 'b', 'e', 'r', 'n', 'e', 't', 'e', 's',
				0x00, 0x07, 'd', 'e', 'f', 'a', 'u', 'l', 't',
				0x00, 0x00, // no tunnel id
			},
		},
		{
			name: "udp with tunnel id",
			h:    StreamHeader{Protocol: ProtocolUDP, Port: 0x1234, Service: "dns", Namespace: "ns", TunnelID: "t-1"},
			want: []byte{
				0x01,
				0x02,
				0x12, 0x34,
				0x00, 0x03, 'd', 'n', 's',
				0x00, 0x02, 'n', 's',
				0x00, 0x03, 't', '-', '1',
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := mustMarshal(t, tt.h); !bytes.Equal(got, tt.want) {
				t.Errorf("MarshalBinary =\n% x\nwant\n% x", got, tt.want)
			}
			var got StreamHeader
			if err := got.UnmarshalBinary(tt.want); err != nil {
				t.Fatalf("UnmarshalBinary: %v", err)
			}
			if got != tt.h {
				t.Errorf("UnmarshalBinary = %+v, want %+v", got, tt.h)
			}
		})
	}
}

func TestStreamHeaderRoundTrip(t *testing.T) {
	for _, tt := range validHeaders {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.h.Validate(); err != nil {
				t.Fatalf("Validate: %v", err)
			}
			enc := mustMarshal(t, tt.h)
			if len(enc) != tt.h.encodedLen() {
				t.Errorf("len = %d, encodedLen = %d", len(enc), tt.h.encodedLen())
			}
			if len(enc) > headerMaxLen {
				t.Errorf("len = %d, above headerMaxLen %d", len(enc), headerMaxLen)
			}

			prefix := []byte("prefix")
			app, err := tt.h.AppendBinary(prefix)
			if err != nil {
				t.Fatalf("AppendBinary: %v", err)
			}
			if !bytes.Equal(app[:len(prefix)], prefix) || !bytes.Equal(app[len(prefix):], enc) {
				t.Errorf("AppendBinary did not append the encoding after the existing bytes")
			}

			var got StreamHeader
			if err := got.UnmarshalBinary(enc); err != nil {
				t.Fatalf("UnmarshalBinary: %v", err)
			}
			if got != tt.h {
				t.Errorf("UnmarshalBinary = %+v, want %+v", got, tt.h)
			}

			got, err = ReadStreamHeader(bytes.NewReader(enc))
			if err != nil {
				t.Fatalf("ReadStreamHeader: %v", err)
			}
			if got != tt.h {
				t.Errorf("ReadStreamHeader = %+v, want %+v", got, tt.h)
			}

			// A reader may return io.EOF together with the header's last
			// bytes; that is a complete header, not a truncated one.
			got, err = ReadStreamHeader(iotest.DataErrReader(bytes.NewReader(enc)))
			if err != nil || got != tt.h {
				t.Errorf("ReadStreamHeader with EOF on the last read = %+v, %v; want %+v", got, err, tt.h)
			}
		})
	}
}

// ReadStreamHeader sits in front of a payload relay: any byte it takes beyond
// the header would be lost to the relayed connection.
func TestReadStreamHeaderLeavesPayload(t *testing.T) {
	payload := []byte("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
	readers := []struct {
		name string
		wrap func(io.Reader) io.Reader
	}{
		{"bytes.Reader", func(r io.Reader) io.Reader { return r }},
		{"one byte per read", iotest.OneByteReader},
		{"half reads", iotest.HalfReader},
	}
	for _, tt := range validHeaders {
		for _, rd := range readers {
			t.Run(tt.name+"/"+rd.name, func(t *testing.T) {
				src := bytes.NewReader(append(mustMarshal(t, tt.h), payload...))
				got, err := ReadStreamHeader(rd.wrap(src))
				if err != nil {
					t.Fatalf("ReadStreamHeader: %v", err)
				}
				if got != tt.h {
					t.Errorf("ReadStreamHeader = %+v, want %+v", got, tt.h)
				}
				rest, _ := io.ReadAll(src)
				if !bytes.Equal(rest, payload) {
					t.Errorf("left %q unread, want the payload %q", rest, payload)
				}
			})
		}
	}
}

func TestDecodeBadHeaders(t *testing.T) {
	for _, tt := range badHeaders {
		t.Run(tt.name, func(t *testing.T) {
			orig := StreamHeader{Service: "untouched"}
			h := orig
			err := h.UnmarshalBinary(tt.in)
			if !errors.Is(err, tt.want) {
				t.Errorf("UnmarshalBinary error = %v, want %v", err, tt.want)
			}
			if h != orig {
				t.Errorf("UnmarshalBinary changed the header on error: %+v", h)
			}

			got, err := ReadStreamHeader(bytes.NewReader(tt.in))
			if !errors.Is(err, tt.want) {
				t.Errorf("ReadStreamHeader error = %v, want %v", err, tt.want)
			}
			if got != (StreamHeader{}) {
				t.Errorf("ReadStreamHeader returned %+v with its error", got)
			}
		})
	}
}

func TestDecodeTruncated(t *testing.T) {
	for _, tt := range validHeaders {
		t.Run(tt.name, func(t *testing.T) {
			enc := mustMarshal(t, tt.h)
			for i := range len(enc) {
				var h StreamHeader
				err := h.UnmarshalBinary(enc[:i])
				if !errors.Is(err, ErrShortHeader) || !errors.Is(err, io.ErrUnexpectedEOF) {
					t.Fatalf("UnmarshalBinary(first %d of %d bytes) error = %v, want ErrShortHeader and io.ErrUnexpectedEOF", i, len(enc), err)
				}

				_, err = ReadStreamHeader(bytes.NewReader(enc[:i]))
				if i == 0 {
					if err != io.EOF {
						t.Fatalf("ReadStreamHeader(empty) error = %v, want io.EOF itself", err)
					}
					continue
				}
				if !errors.Is(err, ErrShortHeader) || !errors.Is(err, io.ErrUnexpectedEOF) {
					t.Fatalf("ReadStreamHeader(first %d of %d bytes) error = %v, want ErrShortHeader and io.ErrUnexpectedEOF", i, len(enc), err)
				}
			}
		})
	}
}

func TestUnmarshalTrailingBytes(t *testing.T) {
	for _, tt := range validHeaders {
		t.Run(tt.name, func(t *testing.T) {
			for _, extra := range [][]byte{{0}, []byte("payload")} {
				var h StreamHeader
				err := h.UnmarshalBinary(append(mustMarshal(t, tt.h), extra...))
				if !errors.Is(err, ErrTrailingBytes) {
					t.Errorf("UnmarshalBinary with %d extra bytes: error = %v, want ErrTrailingBytes", len(extra), err)
				}
			}
		})
	}
}

// errAfterReader returns n bytes of b and then err, like a connection that
// fails mid-header.
type errAfterReader struct {
	b   []byte
	err error
}

func (r *errAfterReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, r.err
	}
	n := copy(p, r.b)
	r.b = r.b[n:]
	return n, nil
}

func TestReadStreamHeaderReadError(t *testing.T) {
	errBoom := errors.New("connection reset")
	enc := mustMarshal(t, KubernetesAPI)
	for _, n := range []int{0, 3, 6, len(enc) - 1} {
		_, err := ReadStreamHeader(&errAfterReader{b: enc[:n], err: errBoom})
		if !errors.Is(err, errBoom) {
			t.Errorf("after %d bytes: error = %v, want it to wrap %v", n, err, errBoom)
		}
		if errors.Is(err, ErrShortHeader) || err == io.EOF {
			t.Errorf("after %d bytes: error = %v, must not look like an end of input", n, err)
		}
	}
}

func TestStreamHeaderValidate(t *testing.T) {
	tests := []struct {
		name string
		h    StreamHeader
		want error
	}{
		{"zero header", StreamHeader{}, ErrUnknownProtocol},
		{"protocol 3", StreamHeader{Protocol: 3, Port: 1, Service: "s"}, ErrUnknownProtocol},
		{"port 0", StreamHeader{Protocol: ProtocolTCP, Service: "s"}, ErrInvalidHeader},
		{"empty service", StreamHeader{Protocol: ProtocolTCP, Port: 1, Namespace: "n"}, ErrInvalidHeader},
		{"service too long", StreamHeader{Protocol: ProtocolTCP, Port: 1, Service: strings.Repeat("s", MaxHeaderString+1)}, ErrHeaderStringTooLong},
		{"namespace too long", StreamHeader{Protocol: ProtocolTCP, Port: 1, Service: "s", Namespace: strings.Repeat("n", MaxHeaderString+1)}, ErrHeaderStringTooLong},
		// Beyond 65535 the length prefix would silently wrap.
		{"tunnel id over 64KiB", StreamHeader{Protocol: ProtocolTCP, Port: 1, Service: "s", TunnelID: strings.Repeat("t", 1<<16+3)}, ErrHeaderStringTooLong},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.h.Validate(); !errors.Is(err, tt.want) {
				t.Errorf("Validate = %v, want %v", err, tt.want)
			}
			prefix := []byte("keep")
			b, err := tt.h.AppendBinary(prefix)
			if !errors.Is(err, tt.want) {
				t.Errorf("AppendBinary error = %v, want %v", err, tt.want)
			}
			if string(b) != "keep" {
				t.Errorf("AppendBinary returned %q on error, want the input unchanged", b)
			}
			if _, err := tt.h.MarshalBinary(); !errors.Is(err, tt.want) {
				t.Errorf("MarshalBinary error = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestStreamHeaderString(t *testing.T) {
	tests := []struct {
		h    StreamHeader
		want string
	}{
		{KubernetesAPI, "tcp/default/kubernetes:443"},
		{StreamHeader{Protocol: ProtocolTCP, Port: 80, Service: "ingress-nginx-controller", Namespace: "ingress-nginx"}, "tcp/ingress-nginx/ingress-nginx-controller:80"},
		{StreamHeader{Protocol: ProtocolUDP, Port: 53, Service: "kube-dns", Namespace: "kube-system", TunnelID: "t-1"}, "udp/kube-system/kube-dns:53 tunnel=t-1"},
		{StreamHeader{Protocol: 9, Port: 1, Service: "evil\nINFO forged", Namespace: "n"}, `protocol(9)/n/"evil\nINFO forged":1`},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			if got := tt.h.String(); got != tt.want {
				t.Errorf("String = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestIsKubernetesAPI(t *testing.T) {
	tests := []struct {
		name string
		h    StreamHeader
		want bool
	}{
		{"KubernetesAPI", KubernetesAPI, true},
		{"with tunnel id", StreamHeader{Protocol: ProtocolTCP, Port: 443, Service: "kubernetes", Namespace: "default", TunnelID: "x"}, true},
		{"other port", StreamHeader{Protocol: ProtocolTCP, Port: 6443, Service: "kubernetes", Namespace: "default"}, false},
		{"other namespace", StreamHeader{Protocol: ProtocolTCP, Port: 443, Service: "kubernetes", Namespace: "kube-system"}, false},
		{"udp", StreamHeader{Protocol: ProtocolUDP, Port: 443, Service: "kubernetes", Namespace: "default"}, false},
		{"ingress", StreamHeader{Protocol: ProtocolTCP, Port: 443, Service: "ingress-nginx-controller", Namespace: "ingress-nginx"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.h.IsKubernetesAPI(); got != tt.want {
				t.Errorf("IsKubernetesAPI(%v) = %v, want %v", tt.h, got, tt.want)
			}
		})
	}
}

func TestProtocolString(t *testing.T) {
	for p, want := range map[Protocol]string{ProtocolTCP: "tcp", ProtocolUDP: "udp", 0: "protocol(0)", 255: "protocol(255)"} {
		if got := p.String(); got != want {
			t.Errorf("Protocol(%d).String() = %q, want %q", uint8(p), got, want)
		}
	}
}

func nonEmptyStrings(h StreamHeader) int {
	n := 0
	for _, s := range []string{h.Service, h.Namespace, h.TunnelID} {
		if s != "" {
			n++
		}
	}
	return n
}

func TestHeaderAllocs(t *testing.T) {
	if testing.Short() {
		t.Skip("allocation counts are slow to measure")
	}
	for _, tt := range validHeaders {
		t.Run(tt.name, func(t *testing.T) {
			enc := mustMarshal(t, tt.h)
			buf := make([]byte, 0, len(enc))
			if n := testing.AllocsPerRun(100, func() {
				buf, _ = tt.h.AppendBinary(buf[:0])
			}); n != 0 {
				t.Errorf("AppendBinary into a big enough buffer: %v allocs, want 0", n)
			}

			want := float64(nonEmptyStrings(tt.h))
			var h StreamHeader
			if n := testing.AllocsPerRun(100, func() {
				if err := h.UnmarshalBinary(enc); err != nil {
					t.Fatal(err)
				}
			}); n > want {
				t.Errorf("UnmarshalBinary: %v allocs, want at most %v (one per non-empty string)", n, want)
			}

			// AllocsPerRun floors its average, so the rare pool miss (frequent
			// under -race, which drops pooled items on purpose) stays hidden.
			r := bytes.NewReader(enc)
			if n := testing.AllocsPerRun(100, func() {
				r.Reset(enc)
				if _, err := ReadStreamHeader(r); err != nil {
					t.Fatal(err)
				}
			}); n > want {
				t.Errorf("ReadStreamHeader: %v allocs, want at most %v (one per non-empty string)", n, want)
			}
		})
	}
}

func BenchmarkReadStreamHeader(b *testing.B) {
	enc := mustMarshal(b, StreamHeader{Protocol: ProtocolTCP, Port: 80, Service: "ingress-nginx-controller", Namespace: "ingress-nginx", TunnelID: "t-1"})
	r := bytes.NewReader(enc)
	b.ReportAllocs()
	for b.Loop() {
		r.Reset(enc)
		if _, err := ReadStreamHeader(r); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkAppendBinary(b *testing.B) {
	h := StreamHeader{Protocol: ProtocolTCP, Port: 80, Service: "ingress-nginx-controller", Namespace: "ingress-nginx", TunnelID: "t-1"}
	buf := make([]byte, 0, headerMaxLen)
	b.ReportAllocs()
	for b.Loop() {
		buf, _ = h.AppendBinary(buf[:0])
	}
}
