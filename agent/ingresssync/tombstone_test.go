package ingresssync

import (
	"io"
	"log/slog"
	"testing"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
)

// TestTombstoneQueuesDeletion: when the watch missed a delete, the informer
// hands over a tombstone; a managed Ingress's tombstone must still queue its
// key (whose sync then finds it gone and unregisters it), and an unmanaged
// one's must not.
func TestTombstoneQueuesDeletion(t *testing.T) {
	s := &Syncer{log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	s.ready.Store(true)
	q := workqueue.NewTypedRateLimitingQueue[string](workqueue.DefaultTypedControllerRateLimiter[string]())
	defer q.ShutDown()
	s.queue = q

	ing := func(name string, managed bool) *networkingv1.Ingress {
		i := &networkingv1.Ingress{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "ns"}}
		if managed {
			i.Labels = map[string]string{LabelManaged: "true"}
		}
		return i
	}
	s.onIngress(cache.DeletedFinalStateUnknown{Key: "ns/plain", Obj: ing("plain", false)}, nil)
	if q.Len() != 0 {
		t.Fatalf("an unmanaged tombstone queued %d keys", q.Len())
	}
	s.onIngress(cache.DeletedFinalStateUnknown{Key: "ns/shop", Obj: ing("shop", true)}, nil)
	if q.Len() != 1 {
		t.Fatalf("a managed tombstone queued %d keys, want 1", q.Len())
	}
	if key, _ := q.Get(); key != "ns/shop" {
		t.Fatalf("queued %q, want ns/shop", key)
	}
}
