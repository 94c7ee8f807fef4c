package session

import (
	"context"

	"github.com/pipeops/tunnel/shared/auth"
)

// JWTAuthenticator accepts agent tokens issued by the control plane: the
// token's cluster is the session's cluster.
type JWTAuthenticator struct {
	Verifier *auth.Verifier
}

// AuthenticateAgent implements Authenticator.
func (a JWTAuthenticator) AuthenticateAgent(ctx context.Context, token string) (AgentIdentity, error) {
	claims, err := a.Verifier.Verify(ctx, token, auth.KindAgent)
	if err != nil {
		return AgentIdentity{}, err
	}
	id := AgentIdentity{Cluster: claims.ClusterID, TokenID: claims.ID}
	if claims.ExpiresAt != nil {
		id.TokenExpires = claims.ExpiresAt.Time
	}
	return id, nil
}
