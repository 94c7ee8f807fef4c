package state_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/pipeops/tunnel/agent/state"
	"github.com/pipeops/tunnel/shared/testenv"
	"github.com/pipeops/tunnel/shared/testenv/kubetest"
)

func TestMain(m *testing.M) { testenv.Main(m, kubetest.Stop) }

// kubeFixture is a KubeStore in a fresh namespace, used through a
// ServiceAccount that has exactly state.Rules, with what the test needs to
// look behind it.
type kubeFixture struct {
	env   *kubetest.Env
	ns    string
	acct  *kubetest.Account
	store *state.KubeStore
}

func newKubeFixture(t *testing.T) *kubeFixture {
	t.Helper()
	env := kubetest.Start(t)
	ns := env.Namespace(t)
	acct := env.ServiceAccount(t, ns, "agent", kubetest.Grant{Namespace: ns, Rules: state.Rules(ns)})
	return &kubeFixture{env: env, ns: ns, acct: acct, store: state.NewKube(acct.Client, ns)}
}

// restarted returns a second store with a client of its own, as a restarted
// agent pod would have.
func (f *kubeFixture) restarted(t *testing.T) *state.KubeStore {
	t.Helper()
	client, err := kubernetes.NewForConfig(f.acct.Config)
	if err != nil {
		t.Fatal(err)
	}
	return state.NewKube(client, f.ns)
}

// stores returns one of each Store, the Kubernetes one only when an API
// server can be had.
func stores(t *testing.T) map[string]func(t *testing.T) state.Store {
	return map[string]func(t *testing.T) state.Store{
		"memory": func(*testing.T) state.Store { return state.NewMemory() },
		"file": func(t *testing.T) state.Store {
			return state.NewFile(filepath.Join(t.TempDir(), "state.json"))
		},
		"kube": func(t *testing.T) state.Store { return newKubeFixture(t).store },
	}
}

// TestStoreContract checks the behaviour every Store shares.
func TestStoreContract(t *testing.T) {
	ctx := context.Background()
	for name, newStore := range stores(t) {
		t.Run(name, func(t *testing.T) {
			s := newStore(t)
			got, err := s.Load(ctx)
			if err != nil || got != (state.State{}) {
				t.Fatalf("Load of nothing = %+v, %v; want zero state", got, err)
			}

			want := state.State{ClusterID: "c-1", ClusterUUID: "u-1", GatewayWSURL: "wss://gw.example.com/ws", AgentID: "a-1",
				UpdatedAt: time.Date(2026, 11, 23, 10, 0, 0, 123456789, time.UTC)}
			if err := s.Save(ctx, want); err != nil {
				t.Fatal(err)
			}
			if got, err = s.Load(ctx); err != nil || got != want {
				t.Fatalf("Load = %+v, %v; want %+v", got, err, want)
			}

			// A zero UpdatedAt is stamped with the save time.
			before := time.Now().Add(-time.Second)
			want = state.State{ClusterID: "c-2"}
			if err := s.Save(ctx, want); err != nil {
				t.Fatal(err)
			}
			got, err = s.Load(ctx)
			if err != nil || got.ClusterID != "c-2" || got.ClusterUUID != "" || got.UpdatedAt.Before(before) {
				t.Fatalf("Load after second save = %+v, %v", got, err)
			}

			// A time in another zone loads as the same instant in UTC, so
			// the loaded State compares equal to what the caller meant.
			east := time.FixedZone("UTC+2", 2*60*60)
			at := time.Date(2026, 11, 23, 12, 0, 0, 5, east)
			if err := s.Save(ctx, state.State{ClusterID: "c-3", UpdatedAt: at}); err != nil {
				t.Fatal(err)
			}
			want = state.State{ClusterID: "c-3", UpdatedAt: at.UTC()}
			if got, err = s.Load(ctx); err != nil || got != want {
				t.Fatalf("Load of a state saved in UTC+2 = %+v, %v; want %+v", got, err, want)
			}
		})
	}
}

// TestStoreConcurrentSave saves from two goroutines at once: the end state
// is one whole State, never a mix of fields.
func TestStoreConcurrentSave(t *testing.T) {
	ctx := context.Background()
	for name, newStore := range stores(t) {
		t.Run(name, func(t *testing.T) {
			s := newStore(t)
			const rounds = 5
			var wg sync.WaitGroup
			errs := make(chan error, 2*rounds)
			for _, writer := range []string{"a", "b"} {
				wg.Go(func() {
					for i := range rounds {
						tag := fmt.Sprintf("%s-%d", writer, i)
						if err := s.Save(ctx, state.State{ClusterID: tag, ClusterUUID: tag, GatewayWSURL: "wss://" + tag, AgentID: tag}); err != nil {
							errs <- err
						}
					}
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
			got, err := s.Load(ctx)
			if err != nil {
				t.Fatal(err)
			}
			tag := got.ClusterID
			if (tag != fmt.Sprintf("a-%d", rounds-1) && tag != fmt.Sprintf("b-%d", rounds-1)) ||
				got.ClusterUUID != tag || got.AgentID != tag || got.GatewayWSURL != "wss://"+tag {
				t.Fatalf("state after concurrent saves = %+v, want one writer's last state whole", got)
			}
		})
	}
}

// TestKubeStore checks what only the cluster can show: a restarted agent
// resumes, the state is one labelled ConfigMap and nothing else, and the
// service account's access is limited to that ConfigMap, with none at all
// to Secrets.
func TestKubeStore(t *testing.T) {
	ctx := context.Background()
	f := newKubeFixture(t)
	saved := state.State{ClusterID: "c-1", ClusterUUID: "u-1", GatewayWSURL: "wss://gw.example.com/ws", AgentID: "a-1"}
	if err := f.store.Save(ctx, saved); err != nil {
		t.Fatal(err)
	}

	t.Run("restart resumes", func(t *testing.T) {
		got, err := f.restarted(t).Load(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if got.ClusterID != saved.ClusterID || got.ClusterUUID != saved.ClusterUUID || got.GatewayWSURL != saved.GatewayWSURL ||
			got.AgentID != saved.AgentID || got.UpdatedAt.IsZero() {
			t.Fatalf("restarted store loaded %+v, want %+v", got, saved)
		}
	})

	t.Run("state in one ConfigMap", func(t *testing.T) {
		admin := f.env.Client.CoreV1()
		cm, err := admin.ConfigMaps(f.ns).Get(ctx, state.ConfigMapName, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if cm.Labels["app.kubernetes.io/managed-by"] != "pipeops-agent" {
			t.Errorf("configmap labels = %v, want managed-by pipeops-agent", cm.Labels)
		}
		var keys []string
		for k := range cm.Data {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		if want := []string{"agent_id", "cluster_id", "cluster_uuid", "gateway_ws_url", "updated_at"}; !slices.Equal(keys, want) ||
			cm.Data["cluster_id"] != "c-1" || cm.Data["gateway_ws_url"] != saved.GatewayWSURL || len(cm.BinaryData) != 0 {
			t.Fatalf("configmap data = %v, want exactly the keys %v", cm.Data, want)
		}
		// Saving wrote no Secret (the agent could not have), and no other
		// ConfigMap either.
		secs, err := admin.Secrets(f.ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(secs.Items) != 0 {
			t.Errorf("namespace holds secrets %v after saves, want none", secs.Items)
		}
		cms, err := admin.ConfigMaps(f.ns).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/managed-by=pipeops-agent"})
		if err != nil {
			t.Fatal(err)
		}
		if len(cms.Items) != 1 || cms.Items[0].Name != state.ConfigMapName {
			t.Errorf("agent-managed configmaps = %v, want only %s", cms.Items, state.ConfigMapName)
		}
	})

	t.Run("keys of others kept", func(t *testing.T) {
		admin := f.env.Client.CoreV1()
		cm, err := admin.ConfigMaps(f.ns).Get(ctx, state.ConfigMapName, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		cm.Data["future_field"] = "kept"
		if _, err := admin.ConfigMaps(f.ns).Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		if err := f.store.Save(ctx, state.State{ClusterID: "c-2"}); err != nil {
			t.Fatal(err)
		}
		cm, err = admin.ConfigMaps(f.ns).Get(ctx, state.ConfigMapName, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if cm.Data["future_field"] != "kept" || cm.Data["cluster_id"] != "c-2" || cm.Data["cluster_uuid"] != "" {
			t.Fatalf("configmap after save = %v", cm.Data)
		}
	})

	// The grant allows get/update on the agent's own ConfigMap only, and
	// nothing on Secrets: not even the one an older agent kept its secrets
	// in, nor creating one.
	t.Run("RBAC limited by resourceNames", func(t *testing.T) {
		admin := f.env.Client.CoreV1()
		other := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "someone-else", Namespace: f.ns}, Data: map[string]string{"k": "v"}}
		if _, err := admin.ConfigMaps(f.ns).Create(ctx, other, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		otherSec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "someone-elses-secret", Namespace: f.ns}, StringData: map[string]string{"k": "v"}}
		if _, err := admin.Secrets(f.ns).Create(ctx, otherSec, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		// The Secret older agents kept, made by an admin so that a wrongly
		// allowed get or update would succeed rather than 404.
		const oldStateSecret = "pipeops-agent-secrets"
		oldSec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: oldStateSecret, Namespace: f.ns}, StringData: map[string]string{"k": "v"}}
		if _, err := admin.Secrets(f.ns).Create(ctx, oldSec, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		agent := f.acct.Client.CoreV1()
		checks := map[string]func() error{
			"get other configmap": func() error {
				_, err := agent.ConfigMaps(f.ns).Get(ctx, "someone-else", metav1.GetOptions{})
				return err
			},
			"update other configmap": func() error {
				_, err := agent.ConfigMaps(f.ns).Update(ctx, other, metav1.UpdateOptions{})
				return err
			},
			"get other secret": func() error {
				_, err := agent.Secrets(f.ns).Get(ctx, "someone-elses-secret", metav1.GetOptions{})
				return err
			},
			"list configmaps": func() error {
				_, err := agent.ConfigMaps(f.ns).List(ctx, metav1.ListOptions{})
				return err
			},
			"list secrets": func() error {
				_, err := agent.Secrets(f.ns).List(ctx, metav1.ListOptions{})
				return err
			},
			"get old state secret": func() error {
				_, err := agent.Secrets(f.ns).Get(ctx, oldStateSecret, metav1.GetOptions{})
				return err
			},
			"update old state secret": func() error {
				_, err := agent.Secrets(f.ns).Update(ctx, oldSec, metav1.UpdateOptions{})
				return err
			},
			"create secret": func() error {
				sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "made-by-agent", Namespace: f.ns}, StringData: map[string]string{"k": "v"}}
				_, err := agent.Secrets(f.ns).Create(ctx, sec, metav1.CreateOptions{})
				return err
			},
			"create secret of the old name": func() error {
				sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: oldStateSecret, Namespace: f.ns}, StringData: map[string]string{"k": "v"}}
				_, err := agent.Secrets(f.ns).Create(ctx, sec, metav1.CreateOptions{})
				return err
			},
			"delete own configmap": func() error {
				return agent.ConfigMaps(f.ns).Delete(ctx, state.ConfigMapName, metav1.DeleteOptions{})
			},
			"own configmap in another namespace": func() error {
				_, err := agent.ConfigMaps("default").Get(ctx, state.ConfigMapName, metav1.GetOptions{})
				return err
			},
		}
		for name, check := range checks {
			if err := check(); !apierrors.IsForbidden(err) {
				t.Errorf("%s: %v, want 403 Forbidden", name, err)
			}
		}
	})
}

func TestFileStore(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	path := filepath.Join(dir, "state.json")
	s := state.NewFile(path)
	if err := s.Save(ctx, state.State{ClusterID: "c-1"}); err != nil {
		t.Fatal(err)
	}

	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != state.StateFileMode {
		t.Errorf("%s mode %v, want %v", path, fi.Mode().Perm(), state.StateFileMode)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || entries[0].Name() != "state.json" {
		t.Fatalf("directory holds %v, want the state file and no temporaries", entries)
	}

	// Another store on the same file, as after a restart.
	again := state.NewFile(path)
	if got, err := again.Load(ctx); err != nil || got.ClusterID != "c-1" {
		t.Fatalf("reloaded state = %+v, %v", got, err)
	}

	if err := os.WriteFile(path, []byte("{not json"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := again.Load(ctx); !errors.Is(err, state.ErrCorrupt) {
		t.Fatalf("Load of a corrupt file: %v, want ErrCorrupt", err)
	}
	missingDir := state.NewFile(filepath.Join(dir, "no-such-dir", "state.json"))
	if err := missingDir.Save(ctx, state.State{ClusterID: "x"}); err == nil {
		t.Fatal("Save into a missing directory succeeded")
	}
}
