package audit

import (
	"net/url"
	"strings"
)

// Verb returns the Kubernetes verb of a request to the API server, derived
// from its method, path (the API server's, without the gateway's
// /k8s/{cluster} prefix) and query the way the API server derives the verb
// it authorises, so that the audit names what RBAC was asked:
//
//   - resource paths (/api/v1/..., /apis/GROUP/VERSION/...): GET or HEAD of
//     a named object is get, of a collection list, or watch with a watch
//     query parameter other than "false" or "0" or under /watch/; POST is
//     create, PUT update, PATCH patch, DELETE of a named object delete and
//     of a collection deletecollection; the exec, attach, portforward and
//     proxy subresources (and the old /proxy/ prefix) are named as such,
//     whatever the method, since that is what they grant;
//   - any other path (/version, /api, /apis, /openapi/v3, /healthz), and a
//     resource path with a method the API server has no verb for: the
//     lower-cased method.
//
// It never fails: anything it cannot make sense of is a non-resource
// request.
func Verb(method, path string, query url.Values) string {
	fallback := strings.ToLower(method)
	parts := splitPath(path)
	// /api/VERSION/RESOURCE... or /apis/GROUP/VERSION/RESOURCE...: shorter
	// paths are discovery, not resources.
	switch {
	case len(parts) >= 3 && parts[0] == "api":
		parts = parts[2:]
	case len(parts) >= 4 && parts[0] == "apis":
		parts = parts[3:]
	default:
		return fallback
	}

	verb := ""
	if parts[0] == "watch" || parts[0] == "proxy" {
		if len(parts) < 2 {
			// The API server refuses it; it authorised nothing.
			return fallback
		}
		verb, parts = parts[0], parts[1:]
	} else {
		switch method {
		case "GET", "HEAD":
			verb = "get"
		case "POST":
			verb = "create"
		case "PUT":
			verb = "update"
		case "PATCH":
			verb = "patch"
		case "DELETE":
			verb = "delete"
		default:
			return fallback
		}
	}

	// /namespaces/NS/RESOURCE/... is RESOURCE in NS; /namespaces/NS and
	// its own subresources (status, finalize) are the namespace object.
	if parts[0] == "namespaces" && len(parts) > 2 && parts[2] != "status" && parts[2] != "finalize" {
		parts = parts[2:]
	}
	// RESOURCE/NAME/SUBRESOURCE/...
	name, sub := "", ""
	if len(parts) >= 2 {
		name = parts[1]
	}
	if len(parts) >= 3 && verb != "proxy" {
		sub = parts[2]
	}
	switch sub {
	case "exec", "attach", "portforward", "proxy":
		return sub
	}
	if name == "" {
		switch verb {
		case "get":
			if isWatch(query) {
				return "watch"
			}
			return "list"
		case "delete":
			return "deletecollection"
		}
	}
	return verb
}

// splitPath splits p at '/', without the empty parts its leading and
// trailing slashes make (inner empty parts stay, as the API server keeps
// them).
func splitPath(p string) []string {
	p = strings.Trim(p, "/")
	if p == "" {
		return nil
	}
	return strings.Split(p, "/")
}

// isWatch reports whether query asks for a watch: the API server takes any
// first value of watch but "false" and "0" (in any case) as true, the empty
// one too.
func isWatch(query url.Values) bool {
	v, ok := query["watch"]
	if !ok || len(v) == 0 {
		return false
	}
	return v[0] != "0" && !strings.EqualFold(v[0], "false")
}
