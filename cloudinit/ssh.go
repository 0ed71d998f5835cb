package cloudinit

import (
	"bytes"
	"fmt"
	"strings"

	"golang.org/x/crypto/ssh"
	"gopkg.in/yaml.v3"
)

// HostKey is an SSH host key for the guest (cloud-config ssh_keys).
type HostKey struct {
	// Private is the private key in OpenSSH's PEM format ("-----BEGIN
	// OPENSSH PRIVATE KEY-----"), the only one sshd reads for ed25519.
	Private string
	// Public is the same key's public half, one authorized_keys line.
	Public string
}

// hostKeyTypes maps the SSH key types stack can place to cloud-config's
// ssh_keys names (cloud-init writes <name>_private to
// /etc/ssh/ssh_host_<name>_key and <name>_public beside it).
var hostKeyTypes = map[string]string{
	ssh.KeyAlgoED25519:  "ed25519",
	ssh.KeyAlgoECDSA256: "ecdsa", ssh.KeyAlgoECDSA384: "ecdsa", ssh.KeyAlgoECDSA521: "ecdsa",
	ssh.KeyAlgoRSA: "rsa",
}

// normaliseSSH checks the exec key and host key of in and copies them to
// out without surrounding white space.
func normaliseSSH(in Input, out *Input) error {
	if k := strings.TrimSpace(in.ExecKey); k != "" {
		if strings.ContainsAny(k, "\r\n") {
			return fmt.Errorf("check exec key: want one authorized_keys line")
		}
		if _, _, _, _, err := ssh.ParseAuthorizedKey([]byte(k)); err != nil {
			return fmt.Errorf("check exec key: %w", err)
		}
		out.ExecKey = k
	}
	if in.HostKey == nil {
		return nil
	}
	priv, err := ssh.ParsePrivateKey([]byte(in.HostKey.Private))
	if err != nil {
		return fmt.Errorf("check host key: %w", err)
	}
	pubLine := strings.TrimSpace(in.HostKey.Public)
	pub, _, _, rest, err := ssh.ParseAuthorizedKey([]byte(pubLine))
	if err != nil || len(bytes.TrimSpace(rest)) > 0 {
		return fmt.Errorf("check host key: the public key is not one authorized_keys line (%v)", err)
	}
	if !bytes.Equal(pub.Marshal(), priv.PublicKey().Marshal()) {
		return fmt.Errorf("check host key: the public key is not the private key's")
	}
	if _, ok := hostKeyTypes[pub.Type()]; !ok {
		return fmt.Errorf("check host key: cloud-init cannot install a %s host key", pub.Type())
	}
	out.HostKey = &HostKey{Private: strings.TrimSpace(in.HostKey.Private) + "\n", Public: pubLine}
	return nil
}

// mergeSSH adds stack's exec key and host key to the user's document.
//
// The exec key goes to root through a users entry ({name: root,
// lock_passwd: false, ssh_authorized_keys: [key]}), after the user's
// entries; without a users list of the user's, "default" comes first, as
// cloud-init's own default is [default]. For an existing user cloud-init
// only adds the keys (lock_passwd false leaves root's password alone). The
// top-level ssh_authorized_keys are not used: cloud-init gives them to the
// default user, and to root only with disable_root false, which would hand
// root to every key the user lists.
//
// The host key goes to ssh_keys (<type>_private and <type>_public), stack's
// own entries: a different user value is replaced with a warning. With
// ssh_keys set, cloud-init deletes the image's host keys and writes these
// instead of generating any.
func (m *merger) mergeSSH(n Input) {
	if n.ExecKey != "" {
		root := mapping(
			"name", strNode("root"),
			"lock_passwd", boolNode(false),
			"ssh_authorized_keys", seq(strNode(n.ExecKey)),
		)
		if v := m.get("users"); v == nil || (v.Kind == yaml.ScalarNode && v.Tag == "!!null") {
			m.appendList("users", strNode("default"), root)
		} else {
			m.appendList("users", root)
		}
	}
	if n.HostKey == nil {
		return
	}
	pub, _, _, _, err := ssh.ParseAuthorizedKey([]byte(n.HostKey.Public))
	if err != nil { // normalise checked it
		m.fail(0, "host key: %v", err)
		return
	}
	name := hostKeyTypes[pub.Type()]
	keys := m.userMapping("ssh_keys")
	if keys == nil {
		return
	}
	priv := strNode(n.HostKey.Private)
	priv.Style = yaml.LiteralStyle
	setOwned(m, keys, "ssh_keys", name+"_private", priv)
	setOwned(m, keys, "ssh_keys", name+"_public", strNode(n.HostKey.Public))
}

// userMapping returns the user's mapping under key, creating it at the end of
// the document when absent or null; a value that is not a mapping is an
// error (nil).
func (m *merger) userMapping(key string) *yaml.Node {
	i := m.index(key)
	if i < 0 {
		v := &yaml.Node{Kind: yaml.MappingNode}
		m.root.Content = append(m.root.Content, strNode(key), v)
		return v
	}
	v := m.root.Content[i+1]
	switch {
	case v.Kind == yaml.MappingNode:
		v.Style &^= yaml.FlowStyle // the private key is a block scalar
		return v
	case v.Kind == yaml.ScalarNode && v.Tag == "!!null":
		nv := &yaml.Node{Kind: yaml.MappingNode}
		m.root.Content[i+1] = nv
		return nv
	}
	m.fail(v.Line, "%s must be a mapping, not a %s", key, kindName(v))
	return nil
}

// setOwned sets key in the mapping node mp (the value of top-level parent)
// to v, warning when the user had set another value.
func setOwned(m *merger, mp *yaml.Node, parent, key string, v *yaml.Node) {
	for i := 0; i+1 < len(mp.Content); i += 2 {
		k := mp.Content[i]
		if k.Kind != yaml.ScalarNode || k.Value != key {
			continue
		}
		if old := mp.Content[i+1]; old.Kind != yaml.ScalarNode || strings.TrimSpace(old.Value) != strings.TrimSpace(v.Value) {
			m.hostKeyWarning(k.Line, parent, key)
		}
		mp.Content[i+1] = v
		return
	}
	mp.Content = append(mp.Content, strNode(key), v)
}

// fail records the merge's first error.
func (m *merger) fail(line int, format string, args ...any) {
	if m.err == nil {
		m.err = &UserDataError{File: m.file, Line: line, Msg: fmt.Sprintf(format, args...)}
	}
}

func (m *merger) hostKeyWarning(line int, parent, key string) {
	m.warnings = append(m.warnings, UserDataError{Line: line, Msg: fmt.Sprintf("%s.%s is set by stack (the VM's SSH host key, which exec pins); the user data's value is ignored", parent, key)})
}

// checkSSH applies mergeSSH's rules without the keys, for CheckUserData:
// users must be a list and ssh_keys a mapping, and the user's ed25519
// host key entries are replaced (the engine makes ed25519 host keys).
func (m *merger) checkSSH() {
	m.list("users")
	keys := m.userMapping("ssh_keys")
	if keys == nil {
		return
	}
	for i := 0; i+1 < len(keys.Content); i += 2 {
		if k := keys.Content[i]; k.Kind == yaml.ScalarNode && (k.Value == "ed25519_private" || k.Value == "ed25519_public") {
			m.hostKeyWarning(k.Line, "ssh_keys", k.Value)
		}
	}
}
