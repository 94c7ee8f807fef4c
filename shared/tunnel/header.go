package tunnel

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"unicode"
)

// Stream header layout, version 1. All integers are big-endian.
//
//	offset  size  field
//	0       1     version   (HeaderVersion)
//	1       1     protocol  (ProtocolTCP, ProtocolUDP)
//	2       2     port      (target port inside the cluster, never 0)
//	4       2     len(service)
//	6       n     service   (n <= MaxHeaderString, never empty)
//	...     2     len(namespace)
//	...     n     namespace (n <= MaxHeaderString)
//	...     2     len(tunnel id)
//	...     n     tunnel id (n <= MaxHeaderString, often empty)
//
// The header has no overall length field, so a reader must walk the length
// prefixes to find where the payload starts.
const (
	// HeaderVersion is the only stream header version this package speaks.
	HeaderVersion uint8 = 1

	// MaxHeaderString is the longest service name, namespace or tunnel id, in
	// bytes, that a stream header may carry. The wire format would allow
	// 65535; the limit caps what a broken or hostile peer can make the agent
	// read and hold per stream before the first payload byte, and is still
	// far above any Kubernetes name (253 bytes at most).
	MaxHeaderString = 1024
)

const (
	headerFixedLen = 4 // version, protocol, port
	headerLenSize  = 2 // each string's length prefix

	// headerMinLen is a header with three empty strings; only useful to
	// size buffers, since Validate rejects an empty service name.
	headerMinLen = headerFixedLen + 3*headerLenSize
	headerMaxLen = headerMinLen + 3*MaxHeaderString

	// readBufLen fits one string plus the length prefix of the next one,
	// which lets ReadStreamHeader fetch both with a single Read.
	readBufLen = MaxHeaderString + headerLenSize
)

// Protocol is the transport the agent must use to reach the target service.
type Protocol uint8

const (
	// ProtocolTCP asks the agent to dial the target over TCP and relay the
	// stream as a byte stream.
	ProtocolTCP Protocol = 1
	// ProtocolUDP asks the agent to relay the stream to a UDP socket.
	ProtocolUDP Protocol = 2
)

// String returns "tcp" or "udp", or "protocol(N)" for values this package
// does not know, so that a bad header can still be logged.
func (p Protocol) String() string {
	switch p {
	case ProtocolTCP:
		return "tcp"
	case ProtocolUDP:
		return "udp"
	}
	return "protocol(" + strconv.Itoa(int(p)) + ")"
}

func (p Protocol) known() bool { return p == ProtocolTCP || p == ProtocolUDP }

// Errors returned when encoding or decoding a stream header. They are
// wrapped with details; test for them with errors.Is.
var (
	// ErrUnsupportedVersion means the first header byte is not HeaderVersion.
	// The rest of the stream cannot be interpreted.
	ErrUnsupportedVersion = errors.New("tunnel: unsupported stream header version")
	// ErrUnknownProtocol means the protocol byte is neither TCP nor UDP.
	ErrUnknownProtocol = errors.New("tunnel: unknown stream protocol")
	// ErrHeaderStringTooLong means a service name, namespace or tunnel id is
	// longer than MaxHeaderString.
	ErrHeaderStringTooLong = errors.New("tunnel: stream header string too long")
	// ErrShortHeader means the input ended inside the header. Errors wrapping
	// it also match io.ErrUnexpectedEOF.
	ErrShortHeader = errors.New("tunnel: stream header truncated")
	// ErrTrailingBytes means UnmarshalBinary was given more than one header.
	ErrTrailingBytes = errors.New("tunnel: trailing bytes after stream header")
	// ErrInvalidHeader means a header is well-formed but unusable: its port
	// is 0 or its service name is empty.
	ErrInvalidHeader = errors.New("tunnel: invalid stream header")
)

// headerFields names the three strings in wire order, for error messages.
var headerFields = [3]string{"service name", "namespace", "tunnel id"}

// StreamHeader is the routing information the gateway writes at the start of
// every yamux stream it opens: which in-cluster service the rest of the
// stream is for.
type StreamHeader struct {
	Protocol  Protocol
	Port      uint16
	Service   string
	Namespace string
	// TunnelID identifies the gateway-side tunnel the connection arrived on;
	// empty for traffic that is not tied to one (e.g. the Kubernetes API).
	TunnelID string
}

// KubernetesAPI is the header the gateway sends for connections to the
// cluster's Kubernetes API server.
var KubernetesAPI = StreamHeader{Protocol: ProtocolTCP, Port: 443, Service: "kubernetes", Namespace: "default"}

// IsKubernetesAPI reports whether h targets the Kubernetes API server, which
// the agent serves with its own credentials instead of dialing a Service.
// The tunnel id is ignored.
func (h StreamHeader) IsKubernetesAPI() bool {
	return h.Protocol == KubernetesAPI.Protocol &&
		h.Port == KubernetesAPI.Port &&
		h.Service == KubernetesAPI.Service &&
		h.Namespace == KubernetesAPI.Namespace
}

// Validate reports whether h can be sent: the protocol is known, the port is
// not 0, the service name is not empty and no string is longer than
// MaxHeaderString. The decoders apply the same rules, so a header that came
// off the wire without error is always valid.
func (h StreamHeader) Validate() error {
	if !h.Protocol.known() {
		return fmt.Errorf("%w: %d", ErrUnknownProtocol, uint8(h.Protocol))
	}
	if h.Port == 0 {
		return fmt.Errorf("%w: port is 0", ErrInvalidHeader)
	}
	if h.Service == "" {
		return fmt.Errorf("%w: empty service name", ErrInvalidHeader)
	}
	for i, s := range [3]string{h.Service, h.Namespace, h.TunnelID} {
		if len(s) > MaxHeaderString {
			return stringTooLong(i, len(s))
		}
	}
	return nil
}

// AppendBinary appends the version 1 encoding of h to b. On error b is
// returned unchanged. It does not allocate when b has room.
func (h StreamHeader) AppendBinary(b []byte) ([]byte, error) {
	if err := h.Validate(); err != nil {
		return b, err
	}
	b = append(b, HeaderVersion, byte(h.Protocol))
	b = binary.BigEndian.AppendUint16(b, h.Port)
	for _, s := range [3]string{h.Service, h.Namespace, h.TunnelID} {
		// Validate bounded len(s) by MaxHeaderString, so this cannot wrap.
		b = binary.BigEndian.AppendUint16(b, uint16(len(s)))
		b = append(b, s...)
	}
	return b, nil
}

// MarshalBinary returns the version 1 encoding of h. Write it to a stream in
// one call so the header never interleaves with payload writes.
func (h StreamHeader) MarshalBinary() ([]byte, error) {
	// Validate first: encodedLen of an oversized header is not worth allocating.
	if err := h.Validate(); err != nil {
		return nil, err
	}
	return h.AppendBinary(make([]byte, 0, h.encodedLen()))
}

func (h StreamHeader) encodedLen() int {
	return headerMinLen + len(h.Service) + len(h.Namespace) + len(h.TunnelID)
}

// UnmarshalBinary decodes b, which must hold exactly one header; bytes after
// it are an error (ErrTrailingBytes) because they would be payload that the
// caller has silently lost. The strings are copied, so b may be reused. On
// error h is left unchanged.
func (h *StreamHeader) UnmarshalBinary(b []byte) error {
	if err := checkPrefix(b); err != nil {
		return err
	}
	if len(b) < headerFixedLen {
		return shortHeader("fixed fields")
	}
	out := StreamHeader{
		Protocol: Protocol(b[1]),
		Port:     binary.BigEndian.Uint16(b[2:]),
	}
	rest := b[headerFixedLen:]
	var strs [3]string
	for i := range strs {
		if len(rest) < headerLenSize {
			return shortHeader(headerFields[i] + " length")
		}
		n, err := stringLen(rest, i)
		if err != nil {
			return err
		}
		rest = rest[headerLenSize:]
		if len(rest) < n {
			return shortHeader(headerFields[i])
		}
		strs[i] = string(rest[:n])
		rest = rest[n:]
	}
	out.Service, out.Namespace, out.TunnelID = strs[0], strs[1], strs[2]
	// Validate before looking for trailing bytes, so that for any input this
	// reports the same error as ReadStreamHeader, which never sees them.
	if err := out.Validate(); err != nil {
		return err
	}
	if len(rest) > 0 {
		return fmt.Errorf("%w: %d bytes", ErrTrailingBytes, len(rest))
	}
	*h = out
	return nil
}

// readBufPool recycles ReadStreamHeader's scratch space. A local array would
// escape to the heap anyway, because it is handed to an io.Reader; pooling
// leaves the decoded strings as the only per-header allocations.
var readBufPool = sync.Pool{New: func() any { return new([readBufLen]byte) }}

// ReadStreamHeader reads one header from r, typically a freshly accepted
// yamux stream. It consumes exactly the header's bytes and nothing more, so
// the caller can hand r on to the payload relay; it never buffers. r should
// have a read deadline, since a peer can stall mid-header.
//
// If r reports io.EOF before the first byte, ReadStreamHeader returns io.EOF
// itself: the stream closed without carrying anything. An end of input
// inside the header returns an error matching ErrShortHeader and
// io.ErrUnexpectedEOF. Other read errors are wrapped and returned.
func ReadStreamHeader(r io.Reader) (StreamHeader, error) {
	bp := readBufPool.Get().(*[readBufLen]byte)
	defer readBufPool.Put(bp)
	buf := bp[:]

	// The fixed fields and the first length prefix are fetched together.
	n, err := io.ReadFull(r, buf[:headerFixedLen+headerLenSize])
	// Judge the bytes that did arrive first: a wrong version explains a
	// short read better than "truncated" does.
	if perr := checkPrefix(buf[:n]); perr != nil {
		return StreamHeader{}, perr
	}
	if err != nil {
		if n == 0 && err == io.EOF {
			return StreamHeader{}, io.EOF
		}
		return StreamHeader{}, readError(err, "fixed fields")
	}
	h := StreamHeader{
		Protocol: Protocol(buf[1]),
		Port:     binary.BigEndian.Uint16(buf[2:]),
	}
	next := buf[headerFixedLen : headerFixedLen+headerLenSize]
	var strs [3]string
	for i := range strs {
		l, err := stringLen(next, i)
		if err != nil {
			return StreamHeader{}, err
		}
		want := l
		if i < len(strs)-1 {
			want += headerLenSize
		}
		if want > 0 {
			if _, err := io.ReadFull(r, buf[:want]); err != nil {
				return StreamHeader{}, readError(err, headerFields[i])
			}
		}
		strs[i] = string(buf[:l])
		next = buf[l:want]
	}
	h.Service, h.Namespace, h.TunnelID = strs[0], strs[1], strs[2]
	if err := h.Validate(); err != nil {
		return StreamHeader{}, err
	}
	return h, nil
}

// checkPrefix validates whatever part of the version and protocol bytes b
// holds, so that both decoders reject a foreign stream as early as possible
// and with the same error.
func checkPrefix(b []byte) error {
	if len(b) > 0 && b[0] != HeaderVersion {
		return fmt.Errorf("%w: got %d, want %d", ErrUnsupportedVersion, b[0], HeaderVersion)
	}
	if len(b) > 1 && !Protocol(b[1]).known() {
		return fmt.Errorf("%w: %d", ErrUnknownProtocol, b[1])
	}
	return nil
}

// stringLen decodes the length prefix at the start of b for field i and
// rejects it before anything of that size is read or allocated.
func stringLen(b []byte, i int) (int, error) {
	n := int(binary.BigEndian.Uint16(b))
	if n > MaxHeaderString {
		return 0, stringTooLong(i, n)
	}
	return n, nil
}

func stringTooLong(i, n int) error {
	return fmt.Errorf("%w: %s is %d bytes, limit %d", ErrHeaderStringTooLong, headerFields[i], n, MaxHeaderString)
}

func shortHeader(where string) error {
	return fmt.Errorf("%w: input ends in %s: %w", ErrShortHeader, where, io.ErrUnexpectedEOF)
}

func readError(err error, where string) error {
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		return shortHeader(where)
	}
	return fmt.Errorf("tunnel: reading stream header %s: %w", where, err)
}

// String formats h for logs as protocol/namespace/service:port, for example
// "tcp/default/kubernetes:443", followed by the tunnel id when there is one.
// Strings holding unprintable characters are quoted, because they come off
// the wire and must not be able to forge log lines.
func (h StreamHeader) String() string {
	var sb strings.Builder
	sb.WriteString(h.Protocol.String())
	sb.WriteByte('/')
	sb.WriteString(logSafe(h.Namespace))
	sb.WriteByte('/')
	sb.WriteString(logSafe(h.Service))
	sb.WriteByte(':')
	sb.WriteString(strconv.Itoa(int(h.Port)))
	if h.TunnelID != "" {
		sb.WriteString(" tunnel=")
		sb.WriteString(logSafe(h.TunnelID))
	}
	return sb.String()
}

func logSafe(s string) string {
	if strings.ContainsFunc(s, func(r rune) bool { return !unicode.IsPrint(r) || r == unicode.ReplacementChar }) {
		return strconv.Quote(s)
	}
	return s
}
