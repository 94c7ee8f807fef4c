package session

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/pipeops/tunnel/shared/tunnel"
)

// targetSuffix marks URL hosts that name a tunnel target.
const targetSuffix = ".tunnel"

// TargetHost returns the host:port to put in a request URL so that a
// Transport from this package sends it over a stream to the given target in
// cluster. Service, namespace and cluster must not contain dots (Kubernetes
// names and cluster ids do not).
func TargetHost(cluster string, h tunnel.StreamHeader) (string, error) {
	for _, part := range []string{h.Service, h.Namespace, cluster} {
		if !targetNamePart(part) {
			return "", fmt.Errorf("target %s in cluster %q cannot be named in a URL host", h, cluster)
		}
	}
	return h.Service + "." + h.Namespace + "." + cluster + targetSuffix + ":" + strconv.Itoa(int(h.Port)), nil
}

// targetNamePart reports whether s can be one of the dot-separated parts of
// a target host. The parser holds what it reads to the same rule, so that
// it accepts exactly what TargetHost can write.
func targetNamePart(s string) bool {
	return s != "" && !strings.ContainsAny(s, ".:/")
}

func parseTargetHost(addr string) (string, tunnel.StreamHeader, error) {
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return "", tunnel.StreamHeader{}, err
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	name, ok := strings.CutSuffix(host, targetSuffix)
	parts := strings.Split(name, ".")
	if err != nil || !ok || len(parts) != 3 || !targetNamePart(parts[0]) || !targetNamePart(parts[1]) || !targetNamePart(parts[2]) {
		return "", tunnel.StreamHeader{}, fmt.Errorf("%q is not a tunnel target address", addr)
	}
	return parts[2], tunnel.StreamHeader{Protocol: tunnel.ProtocolTCP, Port: uint16(port), Service: parts[0], Namespace: parts[1]}, nil
}

// Transport returns an http.Transport whose connections are tunnel streams.
// It keeps idle streams for reuse, up to maxIdlePerTarget per target (at
// least the expected concurrency): opening a stream costs a round trip to the
// agent and a TCP connect inside the cluster, so re-dialling per request
// would make small requests several times slower.
func (r *Registry) Transport(maxIdlePerTarget int) *http.Transport {
	return &http.Transport{
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			cluster, h, err := parseTargetHost(addr)
			if err != nil {
				return nil, err
			}
			return r.Dial(ctx, cluster, h)
		},
		MaxIdleConns:          0, // no global cap; the per-target cap rules
		MaxIdleConnsPerHost:   maxIdlePerTarget,
		IdleConnTimeout:       90 * time.Second,
		ResponseHeaderTimeout: 0, // set by the caller's proxy where it applies
		ExpectContinueTimeout: time.Second,
		ForceAttemptHTTP2:     false,
	}
}
