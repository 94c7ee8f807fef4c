// Package pipeopsfixtures holds golden control messages of the PipeOps
// protocol: one JSON file per message type (and variants), each shaped as a
// PipeOps agent or hosted PipeOps writes it, with field names, encodings and
// quirks (percent strings, base64 bodies, aliases) as they are on the wire.
// Values are made up. The decoders' tests, the conformance suites on both
// sides and the fuzz tests all read them from here.
package pipeopsfixtures

import (
	"embed"
	"fmt"
	"sort"
	"strings"
)

//go:embed testdata/*.json
var files embed.FS

// Direction says who sends a fixture's message.
type Direction string

// Directions.
const (
	AgentToServer Direction = "agent→server"
	ServerToAgent Direction = "server→agent"
)

// Fixture is one golden message.
type Fixture struct {
	Name      string // file name without .json
	Type      string // the envelope's type
	Direction Direction
	JSON      []byte
}

// directions lists who sends each message type. A type in both lists has
// fixtures of either sender, told apart by name (see Load).
var directions = map[string]Direction{
	"register":                 AgentToServer,
	"register_success":         ServerToAgent,
	"register_in_progress":     ServerToAgent,
	"error":                    ServerToAgent,
	"gateway_hello":            ServerToAgent,
	"gateway_hello_ack":        AgentToServer,
	"heartbeat":                AgentToServer,
	"heartbeat_ack":            ServerToAgent,
	"ping":                     ServerToAgent,
	"pong":                     AgentToServer,
	"proxy_request":            ServerToAgent,
	"proxy_request_chunk":      ServerToAgent,
	"proxy_request_stream_end": ServerToAgent,
	"proxy_cancel":             ServerToAgent,
	"proxy_response":           AgentToServer,
	"proxy_response_header":    AgentToServer,
	"proxy_response_chunk":     AgentToServer,
	"proxy_response_end":       AgentToServer,
	"proxy_response_abort":     AgentToServer,
	"proxy_error":              AgentToServer,
	"ws_start":                 ServerToAgent,
	"proxy_websocket_start":    ServerToAgent,
	"ws_data":                  ServerToAgent,
	"proxy_websocket_data":     AgentToServer,
	"ws_close":                 ServerToAgent,
	"proxy_websocket_close":    AgentToServer,
	"tcp_tunnel_start":         ServerToAgent,
	"tcp_tunnel_data":          AgentToServer,
	"tcp_tunnel_close":         AgentToServer,
	"udp_tunnel_data":          ServerToAgent,
	"backpressure":             AgentToServer,
	"protocol_fallback":        AgentToServer,
}

// Types returns every message type of the protocol, sorted.
func Types() []string {
	out := make([]string, 0, len(directions))
	for t := range directions {
		out = append(out, t)
	}
	sort.Strings(out)
	return out
}

// All returns every fixture, sorted by name.
func All() []Fixture {
	entries, err := files.ReadDir("testdata")
	if err != nil {
		panic(err) // embedded: cannot fail
	}
	var out []Fixture
	for _, e := range entries {
		out = append(out, Load(strings.TrimSuffix(e.Name(), ".json")))
	}
	return out
}

// Load returns the fixture named name; it panics when there is none, as a
// test naming a fixture that does not exist is wrong, not unlucky.
func Load(name string) Fixture {
	b, err := files.ReadFile("testdata/" + name + ".json")
	if err != nil {
		panic(fmt.Sprintf("pipeopsfixtures: no fixture %q", name))
	}
	typ := typeOf(b)
	dir, ok := directions[typ]
	if !ok {
		panic(fmt.Sprintf("pipeopsfixtures: fixture %q has unknown type %q", name, typ))
	}
	return Fixture{Name: name, Type: typ, Direction: dir, JSON: b}
}

// typeOf reads the "type" of an envelope without a JSON decoder of the
// package under test.
func typeOf(b []byte) string {
	const key = `"type":"`
	i := strings.Index(string(b), key)
	if i < 0 {
		return ""
	}
	rest := string(b[i+len(key):])
	j := strings.IndexByte(rest, '"')
	if j < 0 {
		return ""
	}
	return rest[:j]
}
