// Command kube-apiserver builds the upstream Kubernetes API server at the
// version pinned in go.mod. It exists only so the test environment can run a
// real API server without downloading prebuilt binaries; see
// shared/testenv/kubetest.
package main

import (
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

func main() {
	os.Exit(cli.Run(app.NewAPIServerCommand()))
}
