package state

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// ConfigMapName is the ConfigMap a KubeStore keeps, in the agent's namespace.
const ConfigMapName = "pipeops-agent-state"

// Keys of the ConfigMap's data.
const (
	keyClusterID    = "cluster_id"
	keyClusterUUID  = "cluster_uuid"
	keyGatewayWSURL = "gateway_ws_url"
	keyAgentID      = "agent_id"
	keyUpdatedAt    = "updated_at"
)

// maxAttempts bounds the retries of a write that lost a race with another
// writer (AlreadyExists on create, Conflict on update).
const maxAttempts = 8

var managedLabels = map[string]string{"app.kubernetes.io/managed-by": "pipeops-agent"}

// KubeStore keeps State in ConfigMap ConfigMapName of one namespace,
// created on the first save. The service account needs Rules(namespace).
//
// A KubeStore holds no state of its own and is safe for concurrent use,
// also from several processes: writes are read-modify-write with the
// object's resourceVersion, retried when another writer got there first.
type KubeStore struct {
	client    kubernetes.Interface
	namespace string
}

var _ Store = (*KubeStore)(nil)

// NewKube returns a KubeStore using client in namespace (the agent's own).
func NewKube(client kubernetes.Interface, namespace string) *KubeStore {
	return &KubeStore{client: client, namespace: namespace}
}

// Rules returns the RBAC rules a KubeStore needs, for a Role in namespace
// (a PolicyRule carries no namespace; the parameter documents where the
// rules belong). get and update are limited to ConfigMapName by
// resourceNames. create cannot be: Kubernetes authorizes a create before
// the object has a name it could match, so a rule with resourceNames never
// allows one. The agent may therefore create any ConfigMap in its
// namespace, though it can read or change only its own afterwards. A
// deployment that creates the ConfigMap up front can drop the create rule.
// No rule names Secrets: the agent keeps nothing secret here.
func Rules(namespace string) []rbacv1.PolicyRule {
	_ = namespace
	return []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"configmaps"}, ResourceNames: []string{ConfigMapName}, Verbs: []string{"get", "update"}},
		{APIGroups: []string{""}, Resources: []string{"configmaps"}, Verbs: []string{"create"}},
	}
}

// Load implements Store. A missing ConfigMap is the zero State.
func (k *KubeStore) Load(ctx context.Context) (State, error) {
	cm, err := k.client.CoreV1().ConfigMaps(k.namespace).Get(ctx, ConfigMapName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return State{}, nil
	}
	if err != nil {
		return State{}, fmt.Errorf("state: reading configmap %s/%s: %w", k.namespace, ConfigMapName, err)
	}
	s := State{
		ClusterID:    cm.Data[keyClusterID],
		ClusterUUID:  cm.Data[keyClusterUUID],
		GatewayWSURL: cm.Data[keyGatewayWSURL],
		AgentID:      cm.Data[keyAgentID],
	}
	if v := cm.Data[keyUpdatedAt]; v != "" {
		t, err := time.Parse(time.RFC3339Nano, v)
		if err != nil {
			return State{}, fmt.Errorf("%w: configmap %s/%s: %s: %w", ErrCorrupt, k.namespace, ConfigMapName, keyUpdatedAt, err)
		}
		s.UpdatedAt = t
	}
	return s, nil
}

// Save implements Store. Keys of the ConfigMap other than the State's are
// kept, so a newer agent's additions survive an older one's save.
func (k *KubeStore) Save(ctx context.Context, s State) error {
	s = stamp(s)
	set := func(data map[string]string) {
		for key, v := range map[string]string{
			keyClusterID: s.ClusterID, keyClusterUUID: s.ClusterUUID,
			keyGatewayWSURL: s.GatewayWSURL, keyAgentID: s.AgentID,
			keyUpdatedAt: s.UpdatedAt.Format(time.RFC3339Nano),
		} {
			data[key] = v
		}
	}
	cms := k.client.CoreV1().ConfigMaps(k.namespace)
	err := upsert(ctx, func() error {
		cm, err := cms.Get(ctx, ConfigMapName, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			cm = &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: ConfigMapName, Namespace: k.namespace, Labels: managedLabels}, Data: map[string]string{}}
			set(cm.Data)
			_, err = cms.Create(ctx, cm, metav1.CreateOptions{})
			return err
		}
		if err != nil {
			return err
		}
		if cm.Data == nil {
			cm.Data = map[string]string{}
		}
		set(cm.Data)
		_, err = cms.Update(ctx, cm, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		return fmt.Errorf("state: saving configmap %s/%s: %w", k.namespace, ConfigMapName, err)
	}
	return nil
}

// upsert runs attempt until it succeeds, retrying when it lost a race with
// another writer: AlreadyExists (the object appeared between our get and
// create) or Conflict (it changed between our get and update). Each retry
// reads the object afresh.
func upsert(ctx context.Context, attempt func() error) error {
	var err error
	for i := range maxAttempts {
		if err = attempt(); err == nil {
			return nil
		}
		if !apierrors.IsAlreadyExists(err) && !apierrors.IsConflict(err) {
			return err
		}
		// A short, growing pause lets the other writer finish.
		t := time.NewTimer(time.Duration(i+1) * 20 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%w (last error: %w)", ctx.Err(), err)
		case <-t.C:
		}
	}
	return fmt.Errorf("gave up after %d attempts: %w", maxAttempts, err)
}
