// Package supervisor owns a namespace's running parts: the switch and
// gateway of every network, the VMM processes (it is their parent, so it
// sees how they exit), their console relays, readiness checks and restart
// policy, and exec sessions in the VMs.
//
// One supervisor runs per namespace, as a detached process: the engine
// starts it through client.Ensure by re-executing its own binary with
// api.SuperviseEnv set, and Main, which such a binary calls first thing,
// runs it. Clients talk to it over a unix control socket with the protocol
// of package supervisor/api, through package supervisor/client. It exits
// once its namespace is empty. It stops its VMs only when told to shut
// down or when its owner process dies; a supervisor that exits otherwise
// leaves them running for the next one to re-adopt.
//
// It writes what only it knows (how each VM runs or ended) in per-VM
// records, which `ps` and the planner read; the namespace's state file
// belongs to the command that holds the state lock.
package supervisor
