package postgres

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"github.com/pipeops/tunnel/controlplane"
)

// FuzzDecodeRouteChange: a notification payload is a route change only when
// it names a cluster, and a change decoded from one is announced again, as
// notify encodes it, as the same change.
func FuzzDecodeRouteChange(f *testing.F) {
	// TestNotifications's changes, as notify encodes them.
	const uuid = "0b5c5bc4-1f0e-4c55-9d7a-2f5e8b1a9c00"
	for _, c := range []controlplane.RouteChange{
		{ClusterUUID: uuid, Hostnames: []string{"app.example.com"}},
		{ClusterUUID: uuid},
		{ClusterUUID: uuid, Hostnames: []string{"b1.example.com", "b2.example.com"}},
	} {
		b, err := json.Marshal(c)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(string(b))
	}
	for _, s := range []string{
		`{"hostnames":["a.example.com"]}`, `{"cluster_uuid":""}`, `{"cluster_uuid":1}`, `{"cluster_uuid":"c","hostnames":"a"}`,
		`{"cluster_uuid":"c","hostnames":[]}`, `{"cluster_uuid":"c","hostnames":null,"extra":true}`,
		`{"cluster_uuid":"c"} {"cluster_uuid":"d"}`, `null`, `[]`, `not json`, ``,
		`{"cluster_uuid":"c","hostnames":["` + strings.Repeat("h", 100) + `"]}`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, payload string) {
		change, ok := decodeRouteChange(payload)
		if !ok {
			if change.ClusterUUID != "" || change.Hostnames != nil {
				t.Fatalf("decodeRouteChange(%q) = %+v with ok false", payload, change)
			}
			return
		}
		if change.ClusterUUID == "" {
			t.Fatalf("decodeRouteChange(%q) = %+v: no cluster", payload, change)
		}
		b, err := json.Marshal(change)
		if err != nil {
			t.Fatalf("encoding %+v: %v", change, err)
		}
		again, ok := decodeRouteChange(string(b))
		if !ok || again.ClusterUUID != change.ClusterUUID || !slices.Equal(again.Hostnames, change.Hostnames) {
			t.Fatalf("%+v encoded as %s decodes as %+v, %v", change, b, again, ok)
		}
	})
}
