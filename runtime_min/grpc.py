"""The gRPC front end (`NIM_GRPC_API_PORT`, default 50051, on the HTTP API's address unless
`NIM_GRPC_API_HOST` says otherwise; runtime_min.settings): the standard `grpc.health.v1` service,
SERVING while Triton is ready, and whatever servicers the task adds (Riva's, for speech). It knows
no task.

It runs on grpc.aio in the HTTP server's event loop (started and stopped by the app's lifespan),
so the task's servicers share the HTTP routes' Triton clients. The servicer classes and messages
are the generated ones the `nvidia-riva-client` package ships, health included.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

log = logging.getLogger("runtime_min")
MAX_MESSAGE_BYTES = 64 << 20  # a minute of 48 kHz stereo PCM fits; Riva's clients default to 64 MiB


class GrpcFrontEnd:
    """`add_servicers(server, state)` registers the task's servicers once the shared clients exist."""

    def __init__(self, host: str, port: int, triton, add_servicers: Callable):
        self.host, self.port, self.triton, self.add_servicers = host, port, triton, add_servicers
        self.server = None
        self.started = False

    async def start(self, state: dict) -> None:
        import grpc
        from riva.client.proto import health_pb2_grpc

        interceptors = [in_flight_interceptor(state["in_flight"])] if "in_flight" in state else []
        self.server = grpc.aio.server(interceptors=interceptors,
                                      options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                                               ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)])
        health_pb2_grpc.add_HealthServicer_to_server(_health_servicer(self.triton), self.server)
        self.add_servicers(self.server, state)
        try:
            bound = self.server.add_insecure_port(f"{self.host}:{self.port}")
        except RuntimeError:
            bound = 0
        if not bound:
            raise OSError(f"cannot listen for gRPC on {self.host}:{self.port} (in use?); set NIM_GRPC_API_PORT")
        await self.server.start()
        self.started = True
        log.info("Serving gRPC on %s:%d", self.host, self.port)

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(grace=5)


def in_flight_interceptor(gauge):
    """A server interceptor counting the task's calls in `gauge` while they run (a stream until it
    ends); the health service's are not the task's work. Built here so grpc is imported only when a
    gRPC front end starts."""
    import inspect

    import grpc

    def counted(behavior, streams_out: bool):
        if streams_out:
            async def stream(request, context):
                gauge.inc()
                try:
                    result = behavior(request, context)
                    if inspect.isasyncgen(result):
                        async for response in result:
                            yield response
                    else:  # a handler that writes with context.write and returns nothing
                        await result
                finally:
                    gauge.dec()
            return stream

        async def unary(request, context):
            gauge.inc()
            try:
                return await behavior(request, context)
            finally:
                gauge.dec()
        return unary

    wrappers = {"unary_unary": grpc.unary_unary_rpc_method_handler, "unary_stream": grpc.unary_stream_rpc_method_handler,
                "stream_unary": grpc.stream_unary_rpc_method_handler,
                "stream_stream": grpc.stream_stream_rpc_method_handler}

    class InFlight(grpc.aio.ServerInterceptor):
        async def intercept_service(self, continuation, details):
            handler = await continuation(details)
            if handler is None or details.method.startswith("/grpc.health."):
                return handler
            for kind, make in wrappers.items():
                behavior = getattr(handler, kind)
                if behavior is not None:
                    return make(counted(behavior, kind.endswith("_stream")),
                                request_deserializer=handler.request_deserializer,
                                response_serializer=handler.response_serializer)
            return handler

    return InFlight()


def enum_name(enum, number: int) -> str:
    """A protobuf enum value's name for a message; a client may send a number the enum does not
    name (protobuf keeps it), whose Name() raises (found by tests/helpers/riva_messages.py)."""
    try:
        return enum.Name(number)
    except ValueError:
        return f"{number} (not one of {', '.join(enum.keys())})"


class NotFound(Exception):
    """A model, mode or voice this server does not serve (NOT_FOUND)."""


class abort_on_errors:
    """A servicer method's errors as one-line statuses: the task's client-mistake classes ->
    INVALID_ARGUMENT, a stream past its bound (runtime_min.streams.BoundPassed) -> OUT_OF_RANGE,
    NotFound -> NOT_FOUND, Triton down or failing (the HTTP side's ApiError 503) -> UNAVAILABLE.
    Anything else propagates (grpc.aio answers it UNKNOWN)."""

    def __init__(self, context, invalid: tuple[type, ...]):
        self.context, self.invalid = context, invalid

    async def __aenter__(self):
        return self

    async def __aexit__(self, kind, error, traceback):
        import grpc

        from runtime_min.http import ApiError
        from runtime_min.streams import BoundPassed

        if isinstance(error, BoundPassed):
            await self.context.abort(grpc.StatusCode.OUT_OF_RANGE, str(error))
        if isinstance(error, self.invalid):
            await self.context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        if isinstance(error, NotFound):
            await self.context.abort(grpc.StatusCode.NOT_FOUND, str(error))
        if isinstance(error, ApiError):
            await self.context.abort(grpc.StatusCode.UNAVAILABLE, error.message)
        return False


def _health_servicer(triton):
    """grpc.health.v1.Health: the whole server ("") is SERVING while Triton reports ready. Built
    here so the generated classes are imported only when a gRPC front end starts."""
    from riva.client.proto import health_pb2, health_pb2_grpc

    def status():
        ready = triton.ready.is_set()
        return health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING

    class Health(health_pb2_grpc.HealthServicer):
        async def Check(self, request, context):
            return health_pb2.HealthCheckResponse(status=status())

        async def Watch(self, request, context):
            last = None
            while True:  # ends when the client cancels (grpc.aio cancels this task)
                if status() != last:
                    last = status()
                    yield health_pb2.HealthCheckResponse(status=last)
                await asyncio.sleep(0.5)

    return Health()
