"""The standard gRPC health check (`grpc.health.v1.Health/Check`) on the upload server.

The scheduler checks a seed peer's upload server with it on every seed refresh, and sends no
download to a seed that fails the check (an unimplemented method fails it). Only Check is
served, answering SERVING: an upload server that answers is serving. Both messages are small
enough to write by hand: the request (a service name) is not read, and the response is field
1 (status) set to 1 (SERVING)."""

from __future__ import annotations

import grpc

__all__ = ["health_handler"]

_SERVICE = "grpc.health.v1.Health"
_SERVING = b"\x08\x01"  # HealthCheckResponse{status: SERVING}, protobuf wire format


async def _check(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return _SERVING


def health_handler() -> grpc.GenericRpcHandler:
    """The health service's Check, for `grpc.aio.Server.add_generic_rpc_handlers`."""
    return grpc.method_handlers_generic_handler(
        _SERVICE, {"Check": grpc.unary_unary_rpc_method_handler(_check)}
    )
