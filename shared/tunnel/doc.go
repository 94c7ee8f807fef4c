// Package tunnel defines the wire protocol spoken between the PipeOps agent,
// which runs inside a customer cluster, and the gateway that exposes that
// cluster's services.
//
// The agent keeps one WebSocket open to the gateway. TEXT frames carry JSON
// control messages ([Message]); BINARY frames carry a yamux byte stream in
// which the gateway opens one stream per proxied connection. Every such
// stream starts with a [StreamHeader] naming the in-cluster service it is
// for. spec.md in this directory is the normative description; this package
// is the reference encoder and decoder, so both ends share one parser and
// one set of limits.
package tunnel
