"""Dragonfly mode: this agent as a member of a Dragonfly cluster (a scheduler names parents;
pieces move over SyncPieces and Vortex), behind the same network interface as the builtin
swarm and under the same proofs. The protocol's values live in `dfagent.dragonfly`."""
