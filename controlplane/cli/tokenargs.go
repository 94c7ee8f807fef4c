package cli

import (
	"flag"
	"fmt"
	"io"

	"github.com/pipeops/tunnel/controlplane/tokens"
	"github.com/pipeops/tunnel/shared/auth"
)

// The arguments of the commands that issue tokens are checked before the
// database is opened (see dispatch): a mistyped name or a misplaced flag
// costs no connection, and is never half-acted on.

// tokenCreate is what `token create` was asked for.
type tokenCreate struct {
	req      tokens.Request // all but the clusters, which need the database
	clusters []string       // --cluster: names or ids, or "*"
	asJSON   bool
}

// parseTokenCreate parses `token create`'s flags (args after "create").
// --user names the person of a user token (--subject is its older name,
// kept for scripts that use it; on an agent token --subject is a label),
// --group their groups; admin tokens carry the configured admin identity,
// so neither is accepted for them.
func parseTokenCreate(args []string) (tokenCreate, error) {
	fs := flag.NewFlagSet("token create", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	kind := fs.String("kind", "", "admin, user or agent")
	ttl := fs.Duration("ttl", 0, "lifetime (default: agent 8760h, user 720h, admin 2160h)")
	user := fs.String("user", "", "the person a user token acts for (its subject)")
	subject := fs.String("subject", "", "the older name of --user; on agent tokens, a label")
	asJSON := fs.Bool("json", false, "print the token and its record as JSON")
	var clusters, groups multiFlag
	fs.Var(&clusters, "cluster", "cluster name or id (repeatable; '*' for all, user tokens)")
	fs.Var(&groups, "group", "a group of the --user (repeatable; user tokens)")
	if err := fs.Parse(args); err != nil {
		return tokenCreate{}, usageError{"token create: " + err.Error()}
	}
	if fs.NArg() > 0 {
		return tokenCreate{}, usageError{fmt.Sprintf("token create: unexpected argument %q", fs.Arg(0))}
	}
	set := setFlags(fs)
	if set["user"] && set["subject"] {
		return tokenCreate{}, usageError{"token create: --subject is the older name of --user: give one of them"}
	}
	out := tokenCreate{clusters: clusters, asJSON: *asJSON}
	out.req = tokens.Request{Kind: auth.Kind(*kind), TTL: *ttl, Subject: *user, Groups: groups}
	if set["subject"] {
		out.req.Subject = *subject
	}
	named := set["user"] || set["subject"]
	switch out.req.Kind {
	case auth.KindUser:
		if err := checkPerson("token create", named, out.req.Subject, groups); err != nil {
			return tokenCreate{}, err
		}
	case auth.KindAdmin:
		if named || len(groups) > 0 {
			return tokenCreate{}, usageError{"token create: an admin token carries the configured admin identity (ADMIN_IDENTITY_USER, ADMIN_IDENTITY_GROUPS): --user, --subject and --group are not for it"}
		}
	case auth.KindAgent:
		if set["user"] || len(groups) > 0 {
			return tokenCreate{}, usageError{"token create: an agent token names no person: --user and --group are for user tokens (--subject labels an agent token)"}
		}
	default:
		return tokenCreate{}, usageError{fmt.Sprintf("token create: --kind %q: want agent, user or admin", *kind)}
	}
	return out, nil
}

// kubeconfigArgs is what `kubeconfig` was asked for.
type kubeconfigArgs struct {
	cluster string // name or id
	user    string // "": the token names no person (subject kubeconfig:<name>)
	groups  []string
}

// parseKubeconfig parses `kubeconfig CLUSTER [--user U] [--group G]...`,
// the flags before or after the cluster.
func parseKubeconfig(args []string) (kubeconfigArgs, error) {
	fs := flag.NewFlagSet("kubeconfig", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	user := fs.String("user", "", "the person the kubeconfig's token acts for")
	var groups multiFlag
	fs.Var(&groups, "group", "a group of the --user (repeatable)")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return kubeconfigArgs{}, usageError{"kubeconfig: " + err.Error()}
	}
	if len(pos) != 1 {
		return kubeconfigArgs{}, usageError{"kubeconfig takes one argument: the cluster name or id"}
	}
	if err := checkPerson("kubeconfig", setFlags(fs)["user"], *user, groups); err != nil {
		return kubeconfigArgs{}, err
	}
	return kubeconfigArgs{cluster: pos[0], user: *user, groups: groups}, nil
}

// checkPerson checks the person a user token is to name: groups only with
// a user, and names auth.ValidateIdentity accepts (the issuer checks them
// again; checking here refuses them before the database is opened).
func checkPerson(cmd string, named bool, user string, groups []string) error {
	if !named {
		if len(groups) > 0 {
			return usageError{cmd + ": --group needs --user: groups belong to the person the token names"}
		}
		return nil
	}
	if err := auth.ValidateIdentity(user, groups); err != nil {
		return fmt.Errorf("%s: %w", cmd, err)
	}
	return nil
}

// setFlags returns the names of the flags given on the command line.
func setFlags(fs *flag.FlagSet) map[string]bool {
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	return set
}

// parseInterspersed parses fs's flags wherever they stand among args (the
// flag package stops at the first other argument) and returns the other
// arguments, in order.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for len(args) > 0 { // every round consumes at least one argument
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			break
		}
		pos, args = append(pos, rest[0]), rest[1:]
	}
	return pos, nil
}
