package cloudinit

import (
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"
	"unicode"

	"gopkg.in/yaml.v3"

	"github.com/stackvm/stack/guestproto"
)

// UserDataError is a problem in the user's #cloud-config document. Line is
// 1-based within the document (0 when the YAML parser gave none); the
// caller maps it onto the stack file or the file user_data was read from.
type UserDataError struct {
	File string // Input.UserDataFile, may be ""
	Line int
	Msg  string
}

func (e *UserDataError) Error() string {
	where := e.File
	if where == "" {
		where = "user data"
	}
	if e.Line > 0 {
		return fmt.Sprintf("%s:%d: %s", where, e.Line, e.Msg)
	}
	return fmt.Sprintf("%s: %s", where, e.Msg)
}

// Header is the first line of every #cloud-config document.
const Header = "#cloud-config"

// Keys stack owns: the user's value is replaced (with a warning when it
// differs). hostname and fqdn must match the VM's name for DNS and `stack
// ps`; preserve_hostname false makes cloud-init apply them; and
// manage_etc_hosts must not be true, because cloud-init would then rewrite
// /etc/hosts from its template on every boot and drop the namespace's hosts.
// "localhost" only maintains the 127.0.1.1 line for the VM's own name.
var ownedKeys = []string{"hostname", "fqdn", "preserve_hostname", "manage_etc_hosts"}

// maxNodes bounds the user's document after alias expansion, so that a
// "billion laughs" document fails instead of exhausting memory.
const maxNodes = 100000

// hostsScript keeps the namespace's hosts in /etc/hosts between two marker
// lines and leaves every other line alone. It runs from bootcmd, so the
// block is refreshed on every boot; its arguments are the lines. cloud-init's
// own /etc/hosts edit (manage_etc_hosts: localhost) keeps comment lines
// verbatim, so the markers survive it.
// STACK_HOSTS_FILE exists for the package's tests only.
const hostsScript = `set -e
f=${STACK_HOSTS_FILE:-/etc/hosts}
tmp="$f.stack-tmp"
touch "$f"
sed '/^# BEGIN stack-managed hosts$/,/^# END stack-managed hosts$/d' "$f" >"$tmp"
{
  echo '# BEGIN stack-managed hosts'
  for l in "$@"; do printf '%s\n' "$l"; done
  echo '# END stack-managed hosts'
} >>"$tmp"
cat "$tmp" >"$f"
rm -f "$tmp"
`

// readyScript starts, detached, a waiter that blocks until cloud-init has
// finished every stage of this boot and then writes $1 (the ready line) or,
// when cloud-init reports errors, its error details, $3 (the report line)
// followed by cloud-init's status.json on the same line, and $2 (the failed
// line) to the console. "Finished" is the existence of
// /run/cloud-init/result.json, which the final stage writes after all its
// modules (the user's runcmd and final_message included); `cloud-init
// status --wait` is not used because 22.4 returns from it at the first
// error, before the final stage. `cloud-init status` then exits 0 (done), 1
// (errors) or, from 23.4 on, 2 (done with warnings, counted as ready).
// status.json is complete when result.json exists (cloud-init writes it
// first); it is ASCII JSON (Python's json.dumps) with newlines only between
// tokens, so deleting them makes one line of the same JSON.
//
// It runs from bootcmd, which cloud-init runs on every boot, so a restarted
// VM reports again. The waiter is written to /run/stack/ready-wait first and
// run as "/bin/sh FILE LINE LINE LINE": systemd re-reads a transient unit
// from its unit file on daemon-reload (cloud-init's mounts module reloads),
// and that round trip mangles shell code given inline (";;" lost), while
// plain words survive it. Under systemd the waiter is a transient unit
// without default dependencies, so it starts at once instead of waiting for
// sysinit.target (which waits for cloud-init.service, which runs bootcmd),
// with its own description (systemd prints it on the console, and the
// default one is the command line, which holds the failed line); without
// systemd it is a detached process.
const readyScript = `set -e
umask 077
mkdir -p /run/stack
cat >/run/stack/ready-wait <<'WAITER'
while [ ! -e /run/cloud-init/result.json ]; do sleep 0.5 || sleep 1; done
rc=0
cloud-init status >/dev/null 2>&1 || rc=$?
if [ "$rc" -eq 0 ] || [ "$rc" -eq 2 ]; then
  printf '\n%s\n' "$1" >/dev/console
else
  cloud-init status --long 2>&1 | sed 's/^/stack: cloud-init: /' >/dev/console
  printf '\n%s %s\n' "$3" "$(tr -d '\n' </run/cloud-init/status.json)" >/dev/console
  printf '\n%s\n' "$2" >/dev/console
fi
WAITER
if [ -d /run/systemd/system ] && command -v systemd-run >/dev/null 2>&1; then
  systemd-run --no-block --quiet --collect --unit=stack-ready \
    --property=DefaultDependencies=no \
    --description="stack: report the end of cloud-init on the console" \
    /bin/sh /run/stack/ready-wait "$1" "$2" "$3"
else
  setsid /bin/sh /run/stack/ready-wait "$1" "$2" "$3" </dev/null >/dev/null 2>&1 &
fi
`

// sharesScript mounts the shared directories at every boot: virtio-fs
// first, then 9p, as the guest init does. Its arguments are the 9p mount
// options (guestproto.NinePMountOptions), then a triple (tag, guest path,
// ro|rw) per share. A failure is said on the console and does not stop the
// boot (the workload will say what it misses).
const sharesScript = `ninep=$1
shift
while [ "$#" -ge 3 ]; do
  tag=$1 dir=$2 mode=$3
  shift 3
  mkdir -p "$dir"
  mountpoint -q "$dir" && continue
  mount -t virtiofs -o "$mode" "$tag" "$dir" 2>/dev/null ||
    mount -t 9p -o "$mode,$ninep" "$tag" "$dir" 2>/dev/null ||
    echo "stack: shared dir $tag: cannot mount it on $dir" >/dev/console
done
`

// userData merges the user's document with stack's part; see
// docs/cloud-init.md for the rules.
func userData(n Input, instanceID string) ([]byte, []string, error) {
	root, err := parseUserData(n.UserData, n.UserDataFile)
	if err != nil {
		return nil, nil, err
	}
	m := &merger{root: root, file: n.UserDataFile}

	m.ownStackKeys(n.VMName, n.Namespace)

	hostsCmd := []string{"sh", "-c", hostsScript, "stack-hosts"}
	for _, h := range n.Hosts {
		hostsCmd = append(hostsCmd, fmt.Sprintf("%s %s %s.%s", h.IP, h.Name, h.Name, HostsDomain(n.Namespace)))
	}
	// bootcmd: stack's commands go first, so that the user's commands see
	// the hosts and the module's exit status stays the user's (cloud-init
	// runs bootcmd as one script whose status is its last command's).
	stackCmds := []*yaml.Node{
		argv(hostsCmd...),
		argv("sh", "-c", readyScript, "stack-ready", ReadyLine(instanceID), FailedLine(instanceID), ReportLine(instanceID)),
	}
	if len(n.Shares) > 0 {
		sharesCmd := []string{"sh", "-c", sharesScript, "stack-shares", guestproto.NinePMountOptions}
		for _, sh := range n.Shares {
			mode := "rw"
			if sh.ReadOnly {
				mode = "ro"
			}
			sharesCmd = append(sharesCmd, sh.Tag, sh.GuestPath, mode)
		}
		stackCmds = append(stackCmds, argv(sharesCmd...))
	}
	m.prepend("bootcmd", stackCmds...)

	var keys []*yaml.Node
	have := map[string]bool{}
	if v := m.get("ssh_authorized_keys"); v != nil && v.Kind == yaml.SequenceNode {
		for _, k := range v.Content {
			if k.Kind == yaml.ScalarNode {
				have[strings.TrimSpace(k.Value)] = true
			}
		}
	}
	for _, k := range n.SSHAuthorizedKeys {
		if !have[k] {
			have[k] = true
			keys = append(keys, strNode(k))
		}
	}
	m.appendList("ssh_authorized_keys", keys...)
	m.mergeSSH(n) // exec's key for root, the pinned host key (ssh.go)

	var mounts []*yaml.Node
	for _, mt := range n.Mounts {
		// nofail: a missing disk must not drop the boot into emergency mode.
		mounts = append(mounts, argvFlow("/dev/disk/by-id/virtio-"+mt.Serial, mt.GuestPath, mt.FSType, "defaults,nofail", "0", "2"))
	}
	m.appendList("mounts", mounts...)

	if m.err != nil {
		return nil, nil, m.err
	}
	body, err := encodeYAML(&yaml.Node{Kind: yaml.DocumentNode, Content: []*yaml.Node{root}})
	if err != nil {
		return nil, nil, fmt.Errorf("encode user-data: %w", err)
	}
	var warnings []string
	for _, w := range m.warnings {
		warnings = append(warnings, fmt.Sprintf("line %d: %s", w.Line, w.Msg))
	}
	return append([]byte(Header+"\n"), body...), warnings, nil
}

// CheckUserData applies the merge rules of Build to the user's document
// of the VM vmName without generating anything, for the loader to report
// at validate time what Build would refuse (the error, a *UserDataError)
// or warn about. It is stricter than Build in one way: bootcmd,
// ssh_authorized_keys and mounts must be lists whether or not stack adds
// to them (cloud-init refuses anything else anyway).
func CheckUserData(src, vmName, namespace string) (warnings []UserDataError, err error) {
	root, err := parseUserData(src, "")
	if err != nil {
		return nil, err
	}
	m := &merger{root: root}
	m.ownStackKeys(vmName, namespace)
	for _, key := range []string{"bootcmd", "ssh_authorized_keys", "mounts"} {
		m.list(key)
	}
	m.checkSSH()
	if m.err != nil {
		return nil, m.err
	}
	return m.warnings, nil
}

func argvFlow(args ...string) *yaml.Node {
	n := argv(args...)
	n.Style = yaml.FlowStyle
	return n
}

var (
	yamlLineRe       = regexp.MustCompile(`line (\d+)`)
	yamlLinePrefixRe = regexp.MustCompile(`^line \d+: `)
)

// parseUserData checks the header and parses the document into a mapping
// node with aliases expanded, anchors, comments and top-level merge keys
// resolved, and duplicate keys refused.
func parseUserData(src, file string) (*yaml.Node, error) {
	if strings.TrimSpace(src) == "" {
		return &yaml.Node{Kind: yaml.MappingNode}, nil
	}
	uerr := func(line int, format string, args ...any) error {
		return &UserDataError{File: file, Line: line, Msg: fmt.Sprintf(format, args...)}
	}
	// cloud-init recognises the header case-insensitively after leading
	// white space; the header line is blanked (not removed) so that the
	// parser's line numbers stay those of the user's file.
	lead := len(src) - len(strings.TrimLeft(src, " \t\r\n"))
	if !strings.HasPrefix(strings.ToLower(src[lead:]), Header) {
		return nil, uerr(strings.Count(src[:lead], "\n")+1, "user data must start with %q", Header)
	}
	// A lone CR ends a line too, for YAML and so for the header.
	end := strings.IndexAny(src[lead:], "\r\n")
	body := src[:lead]
	if end >= 0 {
		body += src[lead+end:]
	}

	dec := yaml.NewDecoder(strings.NewReader(body))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return &yaml.Node{Kind: yaml.MappingNode}, nil
		}
		return nil, yamlError(err, file)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		return nil, uerr(extra.Line, "user data must be one YAML document, found another")
	} else if !errors.Is(err, io.EOF) {
		return nil, yamlError(err, file)
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) == 0 {
		return &yaml.Node{Kind: yaml.MappingNode}, nil
	}
	top := doc.Content[0]
	if top.Kind == yaml.ScalarNode && top.Tag == "!!null" {
		return &yaml.Node{Kind: yaml.MappingNode}, nil
	}
	if top.Kind != yaml.MappingNode {
		return nil, uerr(top.Line, "user data must be a YAML mapping (key: value lines), not a %s", kindName(top))
	}
	budget := maxNodes
	root, err := expand(top, &budget)
	if err != nil {
		return nil, err.(*UserDataError).withFile(file)
	}
	if err := resolveTopMerge(root); err != nil {
		return nil, err.(*UserDataError).withFile(file)
	}
	// The node parser accepts what a value decoder refuses (a !!binary
	// scalar that is not base64, keys such as 0 and 00 that are the same
	// integer): such a document would be written back verbatim and fail in
	// cloud-init, so it is refused here, where the line is the user's.
	var values any
	if err := root.Decode(&values); err != nil {
		return nil, yamlError(err, file)
	}
	return root, nil
}

func (e *UserDataError) withFile(file string) error {
	e.File = file
	return e
}

func yamlError(err error, file string) error {
	msg := err.Error()
	line := 0
	if m := yamlLineRe.FindStringSubmatch(msg); m != nil {
		line, _ = strconv.Atoi(m[1])
	}
	msg = strings.TrimPrefix(msg, "yaml: ")
	msg = yamlLinePrefixRe.ReplaceAllString(msg, "") // the error carries it
	// A value decoder's *yaml.TypeError: "unmarshal errors:\n  line N: ...";
	// the first one is enough.
	if rest, ok := strings.CutPrefix(msg, "unmarshal errors:\n"); ok {
		first, _, _ := strings.Cut(strings.TrimSpace(rest), "\n")
		msg = yamlLinePrefixRe.ReplaceAllString(first, "")
	}
	return &UserDataError{File: file, Line: line, Msg: "invalid YAML: " + msg}
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.SequenceNode:
		return "list"
	case yaml.ScalarNode:
		return "scalar"
	case yaml.AliasNode:
		return "alias"
	case yaml.MappingNode:
		return "mapping"
	}
	return "document"
}

// expand returns a deep copy of n with every alias replaced by a copy of
// its target and anchors and comments dropped. PyYAML (cloud-init's parser)
// refuses a repeated anchor, which copying anchored nodes would create;
// comments are dropped because the document is regenerated anyway. It also
// refuses what PyYAML cannot load: a list or mapping as a mapping key.
// Errors are *UserDataError without File.
func expand(n *yaml.Node, budget *int) (*yaml.Node, error) {
	*budget--
	if *budget < 0 {
		return nil, &UserDataError{Msg: fmt.Sprintf("user data is too large after expanding aliases (over %d nodes)", maxNodes)}
	}
	if n.Kind == yaml.AliasNode {
		if n.Alias == nil {
			return nil, &UserDataError{Line: n.Line, Msg: fmt.Sprintf("alias %q has no anchor", n.Value)}
		}
		return expand(n.Alias, budget)
	}
	// Tags and styles are kept, so scalars are written back as the user
	// wrote them (yes stays a YAML 1.1 boolean, '0755' a string).
	// A custom tag (!foo) means nothing to cloud-init and does not survive
	// a decode and re-encode.
	if n.Kind != yaml.DocumentNode && !strings.HasPrefix(n.ShortTag(), "!!") {
		return nil, &UserDataError{Line: n.Line, Msg: fmt.Sprintf("unsupported YAML tag %q", n.Tag)}
	}
	if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!binary" {
		// Checked here because yaml.v3's decoder reports it without a line.
		clean := strings.Map(func(r rune) rune {
			if unicode.IsSpace(r) {
				return -1
			}
			return r
		}, n.Value)
		if _, err := base64.StdEncoding.DecodeString(clean); err != nil {
			return nil, &UserDataError{Line: n.Line, Msg: "invalid YAML: a !!binary value must be base64"}
		}
	}
	c := &yaml.Node{Kind: n.Kind, Style: n.Style, Tag: n.Tag, Value: n.Value, Line: n.Line, Column: n.Column}
	if c.Kind == yaml.ScalarNode && c.ShortTag() == "!!null" && c.Value == "" {
		// yaml.v3 writes an empty null inside a flow mapping ({a}) as ''.
		c.Value = "null"
	}
	if c.Kind == yaml.ScalarNode && strings.HasPrefix(c.Value, "\n") && c.Style&^(yaml.LiteralStyle|yaml.FoldedStyle) == 0 {
		// yaml.v3 drops the leading empty lines of a block scalar it writes
		// (| or >, its choice for any multi-line value left unstyled).
		c.Style = yaml.DoubleQuotedStyle
	}
	for i, ch := range n.Content {
		e, err := expand(ch, budget)
		if err != nil {
			return nil, err
		}
		if n.Kind == yaml.MappingNode && i%2 == 0 && (e.Kind == yaml.SequenceNode || e.Kind == yaml.MappingNode) {
			return nil, &UserDataError{Line: ch.Line, Msg: "a mapping key must be a scalar, not a " + kindName(e)}
		}
		// A null or custom-tagged key does not survive a decode and
		// re-encode (it comes back as ""); cloud-config keys are strings.
		if n.Kind == yaml.MappingNode && i%2 == 0 && (e.ShortTag() == "!!null" || !strings.HasPrefix(e.ShortTag(), "!!")) {
			return nil, &UserDataError{Line: ch.Line, Msg: fmt.Sprintf("a mapping key must be a string, not %q", e.ShortTag())}
		}
		c.Content = append(c.Content, e)
	}
	if c.Kind == yaml.MappingNode {
		if err := uniqueKeys(c); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// uniqueKeys refuses two keys of one mapping that are the same value once
// resolved (0 and 00, 1 and 0x1, null and ~): yaml.v3 compares keys as
// written, while PyYAML would silently keep the last one.
func uniqueKeys(m *yaml.Node) error {
	seen := map[string]*yaml.Node{}
	for i := 0; i+1 < len(m.Content); i += 2 {
		k := m.Content[i]
		if k.Kind != yaml.ScalarNode || k.ShortTag() == "!!merge" {
			continue
		}
		var v any
		if err := k.Decode(&v); err != nil {
			return &UserDataError{Line: k.Line, Msg: fmt.Sprintf("invalid YAML: key %q: %v", k.Value, err)}
		}
		id := fmt.Sprintf("%T %v", v, v)
		if first, dup := seen[id]; dup && first.Value == k.Value {
			return &UserDataError{Line: k.Line, Msg: fmt.Sprintf("key %q is already set at line %d", k.Value, first.Line)}
		} else if dup {
			return &UserDataError{Line: k.Line, Msg: fmt.Sprintf("key %q is the same key as %q at line %d", k.Value, first.Value, first.Line)}
		}
		seen[id] = k
	}
	return nil
}

// resolveTopMerge applies "<<" merge keys of the top-level mapping, so that
// the keys stack looks for are explicit: a key from a merge is copied in
// unless the mapping sets it itself (YAML merge semantics; the first
// merged mapping wins). Nested merge keys are left for cloud-init.
func resolveTopMerge(root *yaml.Node) error {
	var kept, merged []*yaml.Node
	has := map[string]bool{}
	for i := 0; i+1 < len(root.Content); i += 2 {
		k := root.Content[i]
		if k.Kind == yaml.ScalarNode && k.Tag == "!!merge" {
			continue
		}
		kept = append(kept, k, root.Content[i+1])
		if k.Kind == yaml.ScalarNode {
			has[k.Value] = true
		}
	}
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], root.Content[i+1]
		if k.Kind != yaml.ScalarNode || k.Tag != "!!merge" {
			continue
		}
		sources := []*yaml.Node{v}
		if v.Kind == yaml.SequenceNode {
			sources = v.Content
		}
		for _, s := range sources {
			if s.Kind != yaml.MappingNode {
				return &UserDataError{Line: s.Line, Msg: "a merge key (<<) needs a mapping or a list of mappings"}
			}
			for j := 0; j+1 < len(s.Content); j += 2 {
				mk := s.Content[j]
				if mk.Kind == yaml.ScalarNode && mk.Tag == "!!merge" {
					return &UserDataError{Line: mk.Line, Msg: "nested merge keys (<<) at the top level are not supported"}
				}
				if mk.Kind == yaml.ScalarNode {
					if has[mk.Value] {
						continue
					}
					has[mk.Value] = true
				}
				merged = append(merged, mk, s.Content[j+1])
			}
		}
	}
	root.Content = append(kept, merged...)
	return nil
}

// merger applies stack's keys to the user's top-level mapping.
type merger struct {
	root     *yaml.Node
	file     string
	warnings []UserDataError // File unset
	err      error
}

// ownStackKeys sets the keys stack owns (see ownedKeys).
func (m *merger) ownStackKeys(vmName, namespace string) {
	m.own("hostname", strNode(vmName))
	m.own("fqdn", strNode(vmName+"."+HostsDomain(namespace)))
	m.own("preserve_hostname", boolNode(false))
	m.own("manage_etc_hosts", strNode("localhost"))
}

func (m *merger) index(key string) int {
	for i := 0; i+1 < len(m.root.Content); i += 2 {
		k := m.root.Content[i]
		if k.Kind == yaml.ScalarNode && k.Value == key {
			return i
		}
	}
	return -1
}

func (m *merger) get(key string) *yaml.Node {
	if i := m.index(key); i >= 0 {
		return m.root.Content[i+1]
	}
	return nil
}

// own sets a key stack owns, warning when the user set another value.
func (m *merger) own(key string, v *yaml.Node) {
	i := m.index(key)
	if i < 0 {
		m.root.Content = append(m.root.Content, strNode(key), v)
		return
	}
	old := m.root.Content[i+1]
	if old.Kind != yaml.ScalarNode || old.Value != v.Value {
		m.warnings = append(m.warnings, UserDataError{Line: m.root.Content[i].Line, Msg: fmt.Sprintf("%s is set by stack to %q; the user data's value is ignored", key, v.Value)})
	}
	m.root.Content[i+1] = v
}

// list returns the user's list under key, creating it at the end of the
// document when absent or null; a value that is not a list is an error.
func (m *merger) list(key string) *yaml.Node {
	i := m.index(key)
	if i < 0 {
		s := seq()
		m.root.Content = append(m.root.Content, strNode(key), s)
		return s
	}
	v := m.root.Content[i+1]
	switch {
	case v.Kind == yaml.SequenceNode:
		// Block style: stack's entries hold multi-line scripts, which a
		// flow sequence would squeeze into escaped one-liners.
		v.Style &^= yaml.FlowStyle
		return v
	case v.Kind == yaml.ScalarNode && v.Tag == "!!null":
		s := seq()
		m.root.Content[i+1] = s
		return s
	}
	if m.err == nil {
		m.err = &UserDataError{File: m.file, Line: v.Line, Msg: fmt.Sprintf("%s must be a list, not a %s", key, kindName(v))}
	}
	return seq()
}

func (m *merger) appendList(key string, items ...*yaml.Node) {
	if len(items) == 0 {
		return // the user's value, whatever it is, is left to cloud-init
	}
	s := m.list(key)
	s.Content = append(s.Content, items...)
}

func (m *merger) prepend(key string, items ...*yaml.Node) {
	s := m.list(key)
	s.Content = append(append([]*yaml.Node{}, items...), s.Content...)
}
