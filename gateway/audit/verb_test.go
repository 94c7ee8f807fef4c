package audit

import (
	"net/url"
	"strings"
	"testing"
)

// verbCases are what kubectl and clients send, with the verb the API server
// authorises each under.
var verbCases = []struct {
	method, target, want string
}{
	// Discovery and other non-resource paths: the lower-cased method.
	{"GET", "/version", "get"},
	{"GET", "/api", "get"},
	{"GET", "/api/v1", "get"},
	{"GET", "/apis", "get"},
	{"GET", "/apis/apps", "get"},
	{"GET", "/apis/apps/v1", "get"},
	{"GET", "/openapi/v3", "get"},
	{"GET", "/openapi/v3/apis/apps/v1?hash=abc", "get"},
	{"GET", "/healthz", "get"},
	{"POST", "/version", "post"},
	{"GET", "/", "get"},
	{"GET", "", "get"},
	{"OPTIONS", "/api/v1/pods", "options"}, // no verb for the method
	{"GET", "/api/v1/watch", "get"},        // refused by the API server
	{"GET", "/apis/apps/v1/proxy", "get"},  // likewise

	// Core group.
	{"GET", "/api/v1/pods", "list"},
	{"GET", "/api/v1/namespaces/default/pods", "list"},
	{"HEAD", "/api/v1/namespaces/default/pods", "list"},
	{"GET", "/api/v1/namespaces/default/pods?limit=500", "list"},
	{"GET", "/api/v1/namespaces/default/pods?watch=true&resourceVersion=1", "watch"},
	{"GET", "/api/v1/namespaces/default/pods?watch=1", "watch"},
	{"GET", "/api/v1/namespaces/default/pods?watch=", "watch"},
	{"GET", "/api/v1/namespaces/default/pods?watch=False", "list"},
	{"GET", "/api/v1/namespaces/default/pods?watch=0", "list"},
	{"GET", "/api/v1/watch/namespaces/default/pods", "watch"},
	{"GET", "/api/v1/watch/namespaces/default/pods/web", "watch"},
	{"GET", "/api/v1/watch/pods", "watch"},
	{"GET", "/api/v1/namespaces/default/pods/web", "get"},
	{"GET", "/api/v1/namespaces/default/pods/web?watch=true", "get"}, // named: the API server ignores watch
	{"GET", "/api/v1/namespaces/default/pods/web/log?follow=true", "get"},
	{"GET", "/api/v1/namespaces/default/pods/web/status", "get"},
	{"POST", "/api/v1/namespaces/default/pods", "create"},
	{"PUT", "/api/v1/namespaces/default/pods/web", "update"},
	{"PUT", "/api/v1/namespaces/default/pods/web/status", "update"},
	{"PATCH", "/api/v1/namespaces/default/pods/web", "patch"},
	{"DELETE", "/api/v1/namespaces/default/pods/web", "delete"},
	{"DELETE", "/api/v1/namespaces/default/pods", "deletecollection"},
	{"POST", "/api/v1/namespaces/default/pods/web/eviction", "create"},
	{"POST", "/api/v1/namespaces/default/serviceaccounts/sa/token", "create"},

	// The namespace object itself, and its own subresources.
	{"GET", "/api/v1/namespaces", "list"},
	{"GET", "/api/v1/namespaces/default", "get"},
	{"DELETE", "/api/v1/namespaces/default", "delete"},
	{"PUT", "/api/v1/namespaces/default/finalize", "update"},
	{"GET", "/api/v1/namespaces/default/status", "get"},
	{"POST", "/api/v1/namespaces", "create"},

	// Streams: named by their subresource, whatever the method.
	{"POST", "/api/v1/namespaces/default/pods/web/exec?command=sh&stdin=true", "exec"},
	{"GET", "/api/v1/namespaces/default/pods/web/exec?command=ls", "exec"},
	{"POST", "/api/v1/namespaces/default/pods/web/attach", "attach"},
	{"POST", "/api/v1/namespaces/default/pods/web/portforward", "portforward"},
	{"GET", "/api/v1/namespaces/default/pods/web/portforward", "portforward"},
	{"GET", "/api/v1/namespaces/default/pods/web/proxy/metrics", "proxy"},
	{"GET", "/api/v1/namespaces/default/services/http:web:80/proxy/", "proxy"},
	{"GET", "/api/v1/nodes/node-1/proxy/stats", "proxy"},
	{"GET", "/api/v1/proxy/namespaces/default/pods/web", "proxy"},
	{"GET", "/api/v1/proxy/nodes/node-1/exec", "proxy"}, // the old prefix: no subresource
	{"DELETE", "/api/v1/namespaces/default/pods/web/proxy/x", "proxy"},

	// Named groups, cluster-scoped resources.
	{"GET", "/apis/apps/v1/namespaces/default/deployments", "list"},
	{"GET", "/apis/apps/v1/deployments?watch=true", "watch"},
	{"GET", "/apis/apps/v1/watch/deployments", "watch"},
	{"GET", "/apis/apps/v1/namespaces/default/deployments/web/scale", "get"},
	{"PATCH", "/apis/apps/v1/namespaces/default/deployments/web/scale", "patch"},
	{"DELETE", "/apis/apps/v1/namespaces/default/deployments", "deletecollection"},
	{"GET", "/apis/rbac.authorization.k8s.io/v1/clusterroles/admin", "get"},
	{"DELETE", "/apis/rbac.authorization.k8s.io/v1/clusterroles", "deletecollection"},
	{"POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", "create"},
	{"GET", "/api/v1/nodes", "list"},
	{"GET", "/api/v1/nodes/node-1", "get"},
	{"PUT", "/api/v1/nodes/node-1/status", "update"},
	{"GET", "/api/v1/pods/", "list"}, // a trailing slash changes nothing
}

func TestVerb(t *testing.T) {
	for _, tc := range verbCases {
		t.Run(tc.method+" "+tc.target, func(t *testing.T) {
			p, q, _ := strings.Cut(tc.target, "?")
			query, err := url.ParseQuery(q)
			if err != nil {
				t.Fatal(err)
			}
			if got := Verb(tc.method, p, query); got != tc.want {
				t.Errorf("Verb = %q, want %q", got, tc.want)
			}
		})
	}
}

// FuzzVerb: any method, path and query give a verb without panicking, and
// never an empty one for a non-empty method.
func FuzzVerb(f *testing.F) {
	for _, tc := range verbCases {
		p, q, _ := strings.Cut(tc.target, "?")
		f.Add(tc.method, p, q)
	}
	f.Add("GET", "/api/v1/namespaces", "watch")
	f.Add("X", "//api//v1//", "")
	f.Add("GET", "/apis/a/b/namespaces/x/y/z/exec", "watch=%zz")
	f.Fuzz(func(t *testing.T, method, path, rawQuery string) {
		query, _ := url.ParseQuery(rawQuery)
		v := Verb(method, path, query)
		if method != "" && v == "" {
			t.Errorf("Verb(%q, %q, %q) is empty", method, path, rawQuery)
		}
	})
}
