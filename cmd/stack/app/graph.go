package app

import (
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/stackvm/stack/planner"
)

func newGraphCmd(g *globals, s Streams) *cobra.Command {
	var format string
	cmd := &cobra.Command{
		Use:   "graph",
		Short: "Print the stack's resources and dependencies as a Graphviz (dot) or Mermaid graph",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if format != "dot" && format != "mermaid" {
				return fmt.Errorf("graph: unknown --format %q (dot or mermaid)", format)
			}
			p, err := load(g, s)
			if err != nil {
				return err
			}
			nodes, err := p.Graph()
			if err != nil {
				return err
			}
			writeGraph(s.Out, format, p.Stack.Namespace, graphOf(nodes))
			return nil
		},
	}
	cmd.Flags().StringVar(&format, "format", "dot", "output format: dot (Graphviz) or mermaid")
	return cmd
}

// resourceGraph is what `stack graph` draws: resources, and an edge from
// each to every resource it depends on.
type resourceGraph struct {
	nodes []*planner.Action // in plan order
	edges [][2]int          // dependent, dependency (indexes into nodes)
}

// graphOf flattens the planner's graph: a dependency on a barrier (every
// instance of a VM block) becomes one edge to each of its instances.
func graphOf(nodes []*planner.Node) resourceGraph {
	var g resourceGraph
	index := map[*planner.Node]int{}
	for _, n := range nodes {
		if n.Action != nil {
			index[n] = len(g.nodes)
			g.nodes = append(g.nodes, n.Action)
		}
	}
	var targets func(n *planner.Node, out []int) []int
	targets = func(n *planner.Node, out []int) []int {
		if n.Action != nil {
			return append(out, index[n])
		}
		for _, m := range n.Deps {
			out = targets(m, out)
		}
		return out
	}
	for _, n := range nodes {
		if n.Action == nil {
			continue
		}
		for _, d := range n.Deps {
			for _, to := range targets(d, nil) {
				g.edges = append(g.edges, [2]int{index[n], to})
			}
		}
	}
	return g
}

// writeGraph renders g: networks as ellipses (Mermaid: stadiums), volumes
// as cylinders, VMs as boxes; arrows point from a resource to what it
// depends on.
func writeGraph(w io.Writer, format, namespace string, g resourceGraph) {
	if format == "mermaid" {
		shapes := map[string][2]string{planner.TypeNetwork: {"([", "])"}, planner.TypeVolume: {"[(", ")]"}, planner.TypeVM: {"[", "]"}}
		fmt.Fprintf(w, "%%%% namespace %s\nflowchart LR\n", mermaidText(namespace))
		for i, a := range g.nodes {
			sh := shapes[a.Type]
			fmt.Fprintf(w, "  n%d%s\"%s\"%s\n", i, sh[0], mermaidText(a.Address), sh[1])
		}
		for _, e := range g.edges {
			fmt.Fprintf(w, "  n%d --> n%d\n", e[0], e[1])
		}
		return
	}
	shapes := map[string]string{planner.TypeNetwork: "ellipse", planner.TypeVolume: "cylinder", planner.TypeVM: "box"}
	fmt.Fprintf(w, "digraph %s {\n  rankdir = \"LR\";\n", dotQuote(namespace))
	for _, a := range g.nodes {
		fmt.Fprintf(w, "  %s [shape = %s];\n", dotQuote(a.Address), shapes[a.Type])
	}
	for _, e := range g.edges {
		fmt.Fprintf(w, "  %s -> %s;\n", dotQuote(g.nodes[e[0]].Address), dotQuote(g.nodes[e[1]].Address))
	}
	fmt.Fprintln(w, "}")
}

// dotQuote is s as a DOT quoted string.
func dotQuote(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}

// mermaidText is s safe inside a Mermaid quoted label (entity codes for
// the characters that would end it).
func mermaidText(s string) string {
	return strings.NewReplacer(`"`, "#quot;", "<", "#lt;", ">", "#gt;").Replace(s)
}
