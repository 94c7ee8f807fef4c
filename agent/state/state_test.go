package state_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
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
			if _, err := s.LoadSecret(ctx, "token"); !errors.Is(err, state.ErrNotFound) {
				t.Fatalf("LoadSecret of nothing: %v, want ErrNotFound", err)
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

			for key, value := range map[string]string{"token": "s3cr3t-value", "other.key_1": "x"} {
				if err := s.SaveSecret(ctx, key, value); err != nil {
					t.Fatal(err)
				}
			}
			if err := s.SaveSecret(ctx, "token", "rotated-s3cr3t"); err != nil {
				t.Fatal(err)
			}
			for key, want := range map[string]string{"token": "rotated-s3cr3t", "other.key_1": "x"} {
				if got, err := s.LoadSecret(ctx, key); err != nil || got != want {
					t.Fatalf("LoadSecret(%q) = %q, %v; want %q", key, got, err, want)
				}
			}
			if _, err := s.LoadSecret(ctx, "missing"); !errors.Is(err, state.ErrNotFound) {
				t.Fatalf("LoadSecret(missing): %v, want ErrNotFound", err)
			}
			for _, bad := range []string{"", "a/b", "with space", strings.Repeat("k", 254)} {
				if err := s.SaveSecret(ctx, bad, "v"); !errors.Is(err, state.ErrInvalidKey) {
					t.Fatalf("SaveSecret(%q): %v, want ErrInvalidKey", bad, err)
				}
				if _, err := s.LoadSecret(ctx, bad); !errors.Is(err, state.ErrInvalidKey) {
					t.Fatalf("LoadSecret(%q): %v, want ErrInvalidKey", bad, err)
				}
			}
		})
	}
}

// TestStoreConcurrentSave saves from two goroutines at once: the end state
// is one whole State, never a mix of fields, and secrets saved under
// different keys at the same time are all kept.
func TestStoreConcurrentSave(t *testing.T) {
	ctx := context.Background()
	for name, newStore := range stores(t) {
		t.Run(name, func(t *testing.T) {
			s := newStore(t)
			const rounds = 5
			var wg sync.WaitGroup
			errs := make(chan error, 4*rounds)
			for _, writer := range []string{"a", "b"} {
				wg.Go(func() {
					for i := range rounds {
						tag := fmt.Sprintf("%s-%d", writer, i)
						if err := s.Save(ctx, state.State{ClusterID: tag, ClusterUUID: tag, GatewayWSURL: "wss://" + tag, AgentID: tag}); err != nil {
							errs <- err
						}
						if err := s.SaveSecret(ctx, tag, "v-"+tag); err != nil {
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
			for _, writer := range []string{"a", "b"} {
				for i := range rounds {
					key := fmt.Sprintf("%s-%d", writer, i)
					if v, err := s.LoadSecret(ctx, key); err != nil || v != "v-"+key {
						t.Errorf("secret %s = %q, %v", key, v, err)
					}
				}
			}
		})
	}
}

// TestKubeStore checks what only the cluster can show: a restarted agent
// resumes, secrets land in the Secret only, and the service account's
// access is limited to the agent's two objects.
func TestKubeStore(t *testing.T) {
	ctx := context.Background()
	f := newKubeFixture(t)
	saved := state.State{ClusterID: "c-1", ClusterUUID: "u-1", GatewayWSURL: "wss://gw.example.com/ws", AgentID: "a-1"}
	if err := f.store.Save(ctx, saved); err != nil {
		t.Fatal(err)
	}
	const secret = "eyJ-very-secret-token"
	if err := f.store.SaveSecret(ctx, "agent-token", secret); err != nil {
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
		if v, err := f.restarted(t).LoadSecret(ctx, "agent-token"); err != nil || v != secret {
			t.Fatalf("restarted store secret = %q, %v", v, err)
		}
	})

	t.Run("secret only in the Secret", func(t *testing.T) {
		admin := f.env.Client.CoreV1()
		cm, err := admin.ConfigMaps(f.ns).Get(ctx, state.ConfigMapName, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for k, v := range cm.Data {
			if strings.Contains(v, secret) || strings.Contains(k, "token") {
				t.Fatalf("configmap holds %q=%q", k, v)
			}
		}
		if cm.Data["cluster_id"] != "c-1" {
			t.Fatalf("configmap data = %v", cm.Data)
		}
		sec, err := admin.Secrets(f.ns).Get(ctx, state.SecretName, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if string(sec.Data["agent-token"]) != secret || sec.Type != corev1.SecretTypeOpaque {
			t.Fatalf("secret = %s %v", sec.Type, sec.Data)
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

	// The grant allows get/update on the agent's own objects only.
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
	if err := s.SaveSecret(ctx, "token", "s3cr3t"); err != nil {
		t.Fatal(err)
	}

	for p, want := range map[string]os.FileMode{path: state.StateFileMode, s.SecretsPath(): state.SecretsFileMode} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s mode %v, want %v", p, fi.Mode().Perm(), want)
		}
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(b), "s3cr3t") {
		t.Fatalf("state file holds the secret: %s", b)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 2 {
		t.Fatalf("directory holds %v, want the two files and no temporaries", entries)
	}

	// Another store on the same files, as after a restart.
	again := state.NewFile(path)
	if got, err := again.Load(ctx); err != nil || got.ClusterID != "c-1" {
		t.Fatalf("reloaded state = %+v, %v", got, err)
	}
	if v, err := again.LoadSecret(ctx, "token"); err != nil || v != "s3cr3t" {
		t.Fatalf("reloaded secret = %q, %v", v, err)
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
