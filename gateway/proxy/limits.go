package proxy

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync/atomic"
)

// reasonBodyTooLarge labels refusals of requests whose body is over the
// limit, in the requests_refused_total counters.
const reasonBodyTooLarge = "body_too_large"

// bodyLimit is the request body limit of a route: the gateway's global limit,
// lowered by the route's own when that is smaller. A route cannot raise the
// global limit, so an annotation on a user's Ingress cannot open the gateway
// to larger bodies than its operator allows. 0 means no limit.
func bodyLimit(global, route int64) int64 {
	if route > 0 && (global <= 0 || route < global) {
		return route
	}
	return global
}

// limitBody applies limit (0: none) to r's body. It reports false when r
// declares a Content-Length over the limit: the caller answers 413 without
// reading the body or opening anything upstream. A body of unknown length
// (chunked, or HTTP/2 without a length) is replaced by one cut at the limit,
// which is returned so the caller can tell whether it was cut. A declared
// length within the limit needs nothing more: the server never reads past
// it. r must be the caller's own copy of the request.
func limitBody(r *http.Request, limit int64) (*limitedBody, bool) {
	if limit <= 0 {
		return nil, true
	}
	if r.ContentLength > limit {
		return nil, false
	}
	if r.ContentLength >= 0 || r.Body == nil || r.Body == http.NoBody {
		return nil, true
	}
	b := &limitedBody{rc: r.Body, limit: limit, left: limit}
	r.Body = b
	return b, true
}

// limitedBody is a request body cut at a limit: past it, Read returns an
// *http.MaxBytesError. Unlike http.MaxBytesReader it does not touch the
// ResponseWriter: the Transport reads request bodies on a goroutine of its
// own, concurrently with the handler writing the response. It records that
// the limit was hit because http.Request.Write, which the upgrade path
// uses, hides the cause of a failed body read.
type limitedBody struct {
	rc    io.ReadCloser
	limit int64
	left  int64 // owned by the one reader
	hit   atomic.Bool
}

func (b *limitedBody) Read(p []byte) (int, error) {
	if b.hit.Load() {
		return 0, &http.MaxBytesError{Limit: b.limit}
	}
	// One byte more than allowed tells a body of exactly the limit, which
	// ends there, from a longer one.
	if int64(len(p)) > b.left+1 {
		p = p[:b.left+1]
	}
	n, err := b.rc.Read(p)
	if int64(n) <= b.left {
		b.left -= int64(n)
		return n, err
	}
	n = int(b.left)
	b.left = 0
	b.hit.Store(true)
	return n, &http.MaxBytesError{Limit: b.limit}
}

func (b *limitedBody) Close() error { return b.rc.Close() }

// exceeded reports whether the body was cut. Safe to call while another
// goroutine reads.
func (b *limitedBody) exceeded() bool { return b != nil && b.hit.Load() }

// bodyTooLarge reports whether err, a failure to forward r, came from r's
// body going over its limit, and the limit.
func bodyTooLarge(r *http.Request, err error) (int64, bool) {
	if b, ok := r.Body.(*limitedBody); ok && b.exceeded() {
		return b.limit, true
	}
	if mbe, ok := errors.AsType[*http.MaxBytesError](err); ok {
		return mbe.Limit, true
	}
	return 0, false
}

func bodyTooLargeMessage(limit int64) string {
	return fmt.Sprintf("request body too large: the limit is %d bytes", limit)
}
