package auth

import (
	"fmt"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"
)

// MaxNameLen is the longest user or group name a token may carry, in bytes:
// the longest name Kubernetes accepts for most objects, and ample for an
// e-mail address or a directory group.
const MaxNameLen = 253

// ReservedPrefix starts the user and group names Kubernetes keeps for
// itself (system:masters, system:serviceaccount:..., system:nodes). A token
// naming one would let whoever holds it act as the cluster's own
// components once the agent impersonates it, so no token may.
const ReservedPrefix = "system:"

// Identity returns the person a token acts for, as the agent is to
// impersonate it (Impersonate-User and Impersonate-Group): the subject and
// groups of a user or admin token (admin tokens carry the control plane's
// configured admin identity). It returns "" and no groups for an agent
// token, for a token that names nobody (user tokens issued without a
// subject), and for one whose names ValidateIdentity refuses: such a
// token was not issued by this control plane, so it names no one to act
// for. The groups returned are a copy.
func (c *Claims) Identity() (user string, groups []string) {
	if c.Kind != KindUser && c.Kind != KindAdmin {
		return "", nil
	}
	if c.Subject == "" || ValidateIdentity(c.Subject, c.Groups) != nil {
		return "", nil
	}
	return c.Subject, slices.Clone(c.Groups)
}

// ValidateIdentity checks the user and group names a token is to carry:
// each must be non-empty, at most MaxNameLen bytes of valid UTF-8, printable
// (no control or format characters, which would hide what a log or an
// audit line says), without a leading or trailing space (RBAC would take
// "alice " for another person than "alice"), and must not start with
// ReservedPrefix. The error names
// the first bad value. Issuance calls it for every user and admin identity
// before signing, and Identity for every identity it returns.
func ValidateIdentity(user string, groups []string) error {
	if err := validateName("user", user); err != nil {
		return err
	}
	for _, g := range groups {
		if err := validateName("group", g); err != nil {
			return err
		}
	}
	return nil
}

func validateName(what, name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%s name is empty", what)
	case len(name) > MaxNameLen:
		return fmt.Errorf("%s name %q is %d bytes long, more than %d", what, shorten(name), len(name), MaxNameLen)
	case !utf8.ValidString(name):
		return fmt.Errorf("%s name %q is not valid UTF-8", what, name)
	case strings.IndexFunc(name, func(r rune) bool { return !unicode.IsPrint(r) }) >= 0:
		return fmt.Errorf("%s name %q holds a character that is not printable", what, name)
	case strings.TrimSpace(name) != name:
		return fmt.Errorf("%s name %q starts or ends with a space", what, name)
	case strings.HasPrefix(name, ReservedPrefix):
		return fmt.Errorf("%s name %q starts with %q, which Kubernetes reserves for its own users and groups", what, name, ReservedPrefix)
	}
	return nil
}

// shorten keeps an error about an overlong name readable: its first 32
// bytes (whole runes) and an ellipsis.
func shorten(name string) string {
	const keep = 32
	if len(name) <= keep {
		return name
	}
	cut := keep
	for cut > 0 && !utf8.RuneStart(name[cut]) {
		cut--
	}
	return name[:cut] + "..."
}
