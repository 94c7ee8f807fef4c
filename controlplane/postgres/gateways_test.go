package postgres

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/pipeops/tunnel/controlplane"
)

// TestGatewayTunnels records gateways and their tunnels as a group of
// gateways does: each change is announced, stale gateways drop out of the
// list, a restart forgets the tunnels of the previous run, a stop removes
// the gateway and its tunnels, and a deleted cluster takes its tunnels.
func TestGatewayTunnels(t *testing.T) {
	ctx := context.Background()
	db, clock := newDB(t)
	c1, c2 := mustCluster(t, db, "one"), mustCluster(t, db, "two")

	lctx, cancel := context.WithCancel(ctx)
	ready, changed := make(chan struct{}), make(chan struct{}, 100)
	done := make(chan error, 1)
	go func() {
		done <- db.FollowTunnels(lctx, func() { close(ready) }, func() { changed <- struct{}{} })
	}()
	defer func() {
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("FollowTunnels returned %v", err)
		}
	}()
	select {
	case <-ready:
	case <-time.After(5 * time.Second):
		t.Fatal("not listening after 5s")
	}
	announced := func(what string) {
		t.Helper()
		select {
		case <-changed:
		case <-time.After(2 * time.Second):
			t.Fatalf("%s: not announced", what)
		}
	}
	list := func(liveSince time.Time) []string {
		t.Helper()
		ts, err := db.GatewayTunnels(ctx, liveSince)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, x := range ts {
			out = append(out, x.GatewayID+" "+x.PeerURL+" "+x.ClusterUUID[:4])
		}
		return out
	}

	for _, id := range []string{"gw-a", "gw-b"} {
		if err := db.GatewayStarted(ctx, id, "http://"+id+":8444"); err != nil {
			t.Fatal(err)
		}
		announced("start of " + id)
	}
	for _, x := range []struct {
		gw string
		c  string
	}{{"gw-a", c1.UUID}, {"gw-b", c1.UUID}, {"gw-b", c2.UUID}} {
		if err := db.SetGatewayTunnel(ctx, x.gw, controlplane.GatewayTunnel{ClusterUUID: x.c, Sessions: 1, Draining: 1, SessionIDs: []string{"s-" + x.gw}, K8sHTTP: true}); err != nil {
			t.Fatal(err)
		}
		announced("tunnel")
	}
	want := []string{"gw-a http://gw-a:8444 " + c1.UUID[:4], "gw-b http://gw-b:8444 " + c1.UUID[:4], "gw-b http://gw-b:8444 " + c2.UUID[:4]}
	slices.Sort(want)
	got := list(clock.Now().Add(-time.Minute))
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Fatalf("tunnels %v, want %v", got, want)
	}
	ts, err := db.GatewayTunnels(ctx, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range ts {
		if x.Sessions != 1 || x.Draining != 1 || !x.K8sHTTP || x.Impersonates || !slices.Equal(x.SessionIDs, []string{"s-" + x.GatewayID}) {
			t.Errorf("tunnel read back as %+v", x)
		}
	}

	// gw-b keeps proving it runs; gw-a does not: it drops out.
	clock.Add(30 * time.Second)
	if err := db.GatewaySeen(ctx, "gw-b", "http://gw-b:8444"); err != nil {
		t.Fatal(err)
	}
	if got := list(clock.Now().Add(-15 * time.Second)); len(got) != 2 || got[0][:4] != "gw-b" {
		t.Fatalf("with gw-a stale: %v", got)
	}
	// gw-b's agent of c2 leaves; gw-b restarts and forgets the rest.
	if err := db.SetGatewayTunnel(ctx, "gw-b", controlplane.GatewayTunnel{ClusterUUID: c2.UUID}); err != nil {
		t.Fatal(err)
	}
	announced("tunnel end")
	if got := list(clock.Now().Add(-time.Minute)); len(got) != 2 {
		t.Fatalf("after c2 left gw-b: %v", got)
	}
	if err := db.GatewayStarted(ctx, "gw-b", "http://gw-b:8444"); err != nil {
		t.Fatal(err)
	}
	announced("restart")
	if got := list(clock.Now().Add(-time.Minute)); len(got) != 1 || got[0][:4] != "gw-a" {
		t.Fatalf("after gw-b restarted: %v", got)
	}
	// A tunnel of a cluster that does not exist is ENOTFOUND.
	wantCode(t, db.SetGatewayTunnel(ctx, "gw-b", controlplane.GatewayTunnel{ClusterUUID: "00000000-0000-0000-0000-000000000000", Sessions: 1}), controlplane.ENOTFOUND)
	wantCode(t, db.SetGatewayTunnel(ctx, "gw-b", controlplane.GatewayTunnel{ClusterUUID: "not-a-uuid", Sessions: 1}), controlplane.ENOTFOUND)
	// Deleting the cluster takes its tunnels; stopping gw-a takes the rest.
	if err := db.SetGatewayTunnel(ctx, "gw-a", controlplane.GatewayTunnel{ClusterUUID: c2.UUID, Sessions: 2}); err != nil {
		t.Fatal(err)
	}
	if _, err := db.DeleteCluster(ctx, c1.UUID); err != nil {
		t.Fatal(err)
	}
	if got := list(clock.Now().Add(-time.Minute)); len(got) != 1 || got[0] != "gw-a http://gw-a:8444 "+c2.UUID[:4] {
		t.Fatalf("after deleting c1: %v", got)
	}
	if err := db.GatewayStopped(ctx, "gw-a"); err != nil {
		t.Fatal(err)
	}
	if got := list(time.Time{}); len(got) != 0 {
		t.Fatalf("after gw-a stopped: %v", got)
	}
}
