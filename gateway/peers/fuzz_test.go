package peers

import (
	"context"
	"errors"
	"io"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/pipeops/tunnel/shared/tunnel"
)

// FuzzParseURL: any PEER_URL (from the environment, or from another
// gateway's record) is refused with an error or accepted as http://host:port
// with nothing else.
func FuzzParseURL(f *testing.F) {
	for _, s := range []string{"http://gw-1:8444", "http://10.0.0.1:8444/", "https://gw:8444", "http://gw", "http://u:p@gw:1", "http://[::1]:8444", ":8444", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		u, err := ParseURL(s)
		if err != nil {
			if !strings.Contains(err.Error(), "http://host:port") {
				t.Fatalf("error %q does not say what is wanted", err)
			}
			return
		}
		if u.Scheme != "http" || u.Hostname() == "" || u.Port() == "" || u.User != nil || u.RawQuery != "" || (u.Path != "" && u.Path != "/") {
			t.Fatalf("accepted %q as %#v", s, u)
		}
	})
}

// FuzzDialPeerAnswer: whatever a peer answers a stream request with, the
// dialling gateway gets an error or a connection whose reads return what
// followed a 101, never a panic or a hang.
func FuzzDialPeerAnswer(f *testing.F) {
	f.Add([]byte("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: pipeops-peer/1\r\nPipeops-Peer-Session: s1\r\n\r\nhello"))
	f.Add([]byte("HTTP/1.1 503 Service Unavailable\r\nPipeops-Peer-Error: offline\r\nContent-Length: 0\r\n\r\n"))
	f.Add([]byte("HTTP/1.1 401 Unauthorized\r\n\r\n"))
	f.Add([]byte("garbage\r\n\r\n"))
	f.Add([]byte{})
	h := tunnel.StreamHeader{Protocol: tunnel.ProtocolTCP, Port: 80, Service: "web", Namespace: "shop"}
	u, _ := url.Parse("http://peer.test:8444")
	f.Fuzz(func(t *testing.T, answer []byte) {
		client, server := net.Pipe()
		defer client.Close()
		go func() {
			defer server.Close()
			_ = server.SetDeadline(time.Now().Add(2 * time.Second))
			go io.Copy(io.Discard, server) // the request
			server.Write(answer)
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		pipe := func(context.Context, string, string) (net.Conn, error) { return client, nil }
		conn, err := dialPeer(ctx, pipe, u, "gw-a", testSecret, "c1", h, time.Now())
		if err != nil {
			if errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("dial hung on the answer %q", answer)
			}
			return
		}
		_, _ = io.ReadAll(conn)
		conn.Close()
	})
}
