// Package routesapi is the agent's client of the control plane's routes API
// (POST /api/v1/gateway/routes/register, /sync and /unregister), which tells
// the control plane which hostnames of the cluster the gateways should route,
// and to which Service.
//
// A Client is safe for concurrent use once configured; its fields must not
// change after the first call.
package routesapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/pipeops/tunnel/shared/routeproto"
)

// ErrUnauthorized means the control plane refused the agent token (HTTP 401
// or 403). Retrying soon will not help: the token was revoked, expired or
// belongs to another cluster, so callers should log it loudly and back off.
// Errors returned for 401/403 are *APIError values that match it with
// errors.Is.
var ErrUnauthorized = errors.New("control plane refused the agent token")

// maxErrorBody bounds how much of an error response is read, so a
// misbehaving server cannot make the agent buffer an unbounded body.
const maxErrorBody = 64 << 10

// maxErrorMessage bounds how much of an error body that is not the control
// plane's error shape (a proxy's page, say) is kept for the log.
const maxErrorMessage = 512

// DefaultTimeout is the timeout of the HTTP client used when Client.HTTP is
// nil. The calls are small and the control plane answers them from one
// database transaction, so a long wait means something is wrong.
const DefaultTimeout = 30 * time.Second

var defaultHTTP = &http.Client{Timeout: DefaultTimeout}

// APIError is a non-200 answer of the control plane, decoded from its error
// body {"error":{"code":"...","message":"..."}}. Code and Message are empty
// when the body was not of that shape; Message then holds the start of the
// body.
type APIError struct {
	Status  int
	Code    string
	Message string
}

func (e *APIError) Error() string {
	switch {
	case e.Code != "" && e.Message != "":
		return fmt.Sprintf("control plane: HTTP %d %s: %s", e.Status, e.Code, e.Message)
	case e.Message != "":
		return fmt.Sprintf("control plane: HTTP %d: %s", e.Status, e.Message)
	default:
		return fmt.Sprintf("control plane: HTTP %d", e.Status)
	}
}

// Is lets errors.Is(err, ErrUnauthorized) recognise 401 and 403 answers.
func (e *APIError) Is(target error) bool {
	return target == ErrUnauthorized && (e.Status == http.StatusUnauthorized || e.Status == http.StatusForbidden)
}

// IsNotFound reports whether err is a 404 answer; for Unregister it means the
// control plane holds no route for the hostname, which is what the caller
// wanted anyway.
func IsNotFound(err error) bool {
	var ae *APIError
	return errors.As(err, &ae) && ae.Status == http.StatusNotFound
}

// Client calls the routes API of the control plane at BaseURL with the
// agent's token.
type Client struct {
	// BaseURL is the control plane's URL, e.g. https://cp.example.com; the
	// API paths are appended to it.
	BaseURL string
	// Token is the agent token, sent as a Bearer token.
	Token string
	// HTTP is the client used; nil means one with DefaultTimeout.
	HTTP *http.Client
	// Logger is told, once per hostname and challenge, of hostnames the
	// control plane stores but does not serve until their DNS TXT record is
	// published; nil discards.
	Logger *slog.Logger

	mu      sync.Mutex
	pending map[string]string // hostname -> the TXT value already logged
}

// pendingView is a hostname the control plane holds pending verification.
type pendingView struct {
	Hostname   string `json:"hostname"`
	TXTName    string `json:"txt_name"`
	TXTValue   string `json:"txt_value"`
	CheckError string `json:"check_error"`
}

// successBody is what the register and sync answers carry that the agent
// acts on (PipeOps' own control plane sends neither field).
type successBody struct {
	Verification *pendingView  `json:"verification"`
	Pending      []pendingView `json:"pending_verification"`
}

// notePending logs each newly pending hostname once, with what to publish.
func (c *Client) notePending(b successBody) {
	if c.Logger == nil {
		return
	}
	ps := b.Pending
	if b.Verification != nil {
		ps = append(ps, *b.Verification)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.pending == nil {
		c.pending = map[string]string{}
	}
	for _, p := range ps {
		if c.pending[p.Hostname] == p.TXTValue || len(c.pending) >= 10_000 {
			continue
		}
		c.pending[p.Hostname] = p.TXTValue
		c.Logger.Warn("hostname stored but not served until its domain is verified: publish this DNS TXT record",
			"hostname", p.Hostname, "txt_name", p.TXTName, "txt_value", p.TXTValue, "last_check", p.CheckError)
	}
}

// Route is one hostname and path of the cluster, as Register sends it.
type Route struct {
	Hostname    string
	Namespace   string
	ServiceName string
	ServicePort int
	IngressName string
	Path        string
	PathType    string
	TLS         bool
	Annotations map[string]string
	// PublicEndpoint and RoutingMode describe how the gateway reaches the
	// cluster: "direct" to PublicEndpoint, or "tunnel" (empty endpoint).
	PublicEndpoint string
	RoutingMode    string
}

// IngressController is the in-cluster Service the gateway's traffic goes to.
type IngressController = routeproto.IngressController

// Sync is the cluster's whole route set. The control plane replaces every
// route of the cluster with it.
type Sync struct {
	ClusterUUID       string
	PublicEndpoint    string
	RoutingMode       string
	IngressController *IngressController
	Ingresses         []Ingress
}

// Ingress is one Ingress of a Sync.
type Ingress struct {
	Namespace   string
	IngressName string
	Annotations map[string]string
	Rules       []Rule
}

// Rule is one host of an Ingress; TLS says whether the Ingress terminates
// TLS for it.
type Rule struct {
	Host  string
	TLS   bool
	Paths []Path
}

// Path is one path of a Rule and the Service port it goes to.
type Path struct {
	Path        string
	PathType    string
	ServiceName string
	ServicePort int
}

func orEmpty(m map[string]string) map[string]string {
	if m == nil {
		return map[string]string{}
	}
	return m
}

// Register creates or updates the route r.Hostname + r.Path of the cluster.
func (c *Client) Register(ctx context.Context, clusterUUID string, r Route) error {
	return c.post(ctx, routeproto.RegisterURLPath, routeproto.RegisterRequest{
		Hostname: r.Hostname, ClusterUUID: clusterUUID, Namespace: r.Namespace,
		ServiceName: r.ServiceName, ServicePort: r.ServicePort, IngressName: r.IngressName,
		Path: r.Path, PathType: r.PathType, TLS: r.TLS, Annotations: orEmpty(r.Annotations),
		PublicEndpoint: r.PublicEndpoint, RoutingMode: r.RoutingMode,
	})
}

// Unregister deletes every route of the cluster for hostname. A hostname the
// control plane does not know gives an error for which IsNotFound is true.
func (c *Client) Unregister(ctx context.Context, clusterUUID, hostname string) error {
	return c.post(ctx, routeproto.UnregisterURLPath, routeproto.UnregisterRequest{Hostname: hostname, ClusterUUID: clusterUUID})
}

// Sync replaces the cluster's whole route set with s.
func (c *Client) Sync(ctx context.Context, s Sync) error {
	body := routeproto.SyncRequest{
		ClusterUUID: s.ClusterUUID, PublicEndpoint: s.PublicEndpoint, RoutingMode: s.RoutingMode,
		IngressController: s.IngressController, Ingresses: make([]routeproto.SyncIngress, 0, len(s.Ingresses)),
	}
	for _, ing := range s.Ingresses {
		si := routeproto.SyncIngress{Namespace: ing.Namespace, IngressName: ing.IngressName,
			Annotations: orEmpty(ing.Annotations), Rules: make([]routeproto.SyncRule, 0, len(ing.Rules))}
		for _, r := range ing.Rules {
			sr := routeproto.SyncRule{Host: r.Host, TLS: r.TLS, Paths: make([]routeproto.SyncPath, 0, len(r.Paths))}
			for _, p := range r.Paths {
				sr.Paths = append(sr.Paths, routeproto.SyncPath(p))
			}
			si.Rules = append(si.Rules, sr)
		}
		body.Ingresses = append(body.Ingresses, si)
	}
	return c.post(ctx, routeproto.SyncURLPath, body)
}

// maxSuccessBody bounds the success answer read for pending hostnames.
const maxSuccessBody = 1 << 20

func (c *Client) post(ctx context.Context, path string, body any) error {
	data, err := json.Marshal(body)
	if err != nil {
		return fmt.Errorf("routes API %s: encode: %w", path, err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimRight(c.BaseURL, "/")+path, bytes.NewReader(data))
	if err != nil {
		return fmt.Errorf("routes API %s: %w", path, err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	req.Header.Set("Authorization", "Bearer "+c.Token)
	hc := c.HTTP
	if hc == nil {
		hc = defaultHTTP
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("routes API %s: %w", path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		// The success body may list hostnames pending verification; it is
		// read bounded, and one that does not decode is no error (PipeOps'
		// control plane answers other shapes).
		var b successBody
		if json.NewDecoder(io.LimitReader(resp.Body, maxSuccessBody)).Decode(&b) == nil {
			c.notePending(b)
		}
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxErrorBody))
		return nil
	}
	return fmt.Errorf("routes API %s: %w", path, decodeError(resp))
}

func decodeError(resp *http.Response) *APIError {
	ae := &APIError{Status: resp.StatusCode}
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	var body struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if json.Unmarshal(raw, &body) == nil && (body.Error.Code != "" || body.Error.Message != "") {
		ae.Code, ae.Message = body.Error.Code, body.Error.Message
		return ae
	}
	// Not the control plane's error shape (a proxy's page, say): keep the
	// start of it for the log.
	msg := strings.TrimSpace(string(raw))
	if len(msg) > maxErrorMessage {
		// Cut at a character boundary: half a UTF-8 sequence would make
		// the message invalid text in the log.
		cut := maxErrorMessage
		for i := 0; i < utf8.UTFMax-1 && !utf8.RuneStart(msg[cut]); i++ {
			cut--
		}
		msg = msg[:cut] + "..."
	}
	ae.Message = msg
	return ae
}
