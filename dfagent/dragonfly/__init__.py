"""Speaking to Dragonfly as dfdaemon 1.5.10 does, as pure values and asyncio: the ids of tasks,
hosts, peers and pieces, how a task is cut into pieces, and the Vortex piece transfer
(`dfagent.dragonfly.vortex`)."""

from dfagent.dragonfly.ids import host_id, peer_id, piece_id, task_id_for_blob, task_id_for_url
from dfagent.dragonfly.pieces import piece_bounds, piece_count, piece_length
from dfagent.dragonfly.url import DEFAULT_FILTERED_QUERY_PARAMS, canonical_url

__all__ = [
    "DEFAULT_FILTERED_QUERY_PARAMS",
    "canonical_url",
    "host_id",
    "peer_id",
    "piece_bounds",
    "piece_count",
    "piece_id",
    "piece_length",
    "task_id_for_blob",
    "task_id_for_url",
]
