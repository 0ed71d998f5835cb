package stack

import "github.com/stackvm/stack/supervisor"

// newGateway returns the factory of network gateways (DHCP, DNS, published
// ports) that the supervisor attaches to every switch.
func newGateway() supervisor.GatewayFactory { return nil }
