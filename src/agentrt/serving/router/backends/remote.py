"""A remote OpenAI-compatible server (vLLM, SGLang, llama.cpp, another agentrt) as one engine of the router.

Each call becomes one streaming ``/v1/chat/completions`` or
``/v1/completions`` request over a shared httpx client. The program travels
as headers (``x-session-id`` for the session-affinity routers of vLLM and
SGLang, the ``x-agentrt-*`` headers for another agentrt) and its priority
as the body's ``priority`` field, in the order the server expects: vLLM
runs lower values sooner, SGLang higher values sooner unless it was started
with ``--schedule-low-priority-values-first``. Aborting a call closes its
stream, which the server takes as a client disconnect.

A server that runs what it is sent first come, first served gets admission
instead (:mod:`agentrt.serving.router.admission`): at most ``max_inflight``
calls running, ``queue_ahead`` more sent ahead to wait in the server's own
queue (so that a freed slot starts the next call at once), the rest waiting
here in the policy's order. llama.cpp's server says its slot count
(``/props`` ``total_slots``); there each call granted a free slot also names
the slot that holds its program's context (``id_slot``); with ``slot_save``
(a server started with ``--slot-save-path``), a program whose slot is given
to another is saved to a file there first and restored into the slot its
next call gets (``/slots/{id}?action=save|restore``), instead of the server
computing its context again.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator
from typing import Literal
from urllib.parse import quote

import anyio
import httpx
import msgspec
from anyio.abc import TaskStatus

from agentrt.log import get_logger
from agentrt.protocol.engine import (
    EngineStats,
    EngineUnavailable,
    GenerationRequest,
    ModelInfo,
    ProgramTag,
    Timings,
    TokenEvent,
)
from agentrt.protocol.headers import PROGRAM, HeaderError, format_headers, parse_headers
from agentrt.protocol.programs import ToolEvent
from agentrt.scheduling import SchedulerConfig
from agentrt.serving.router.admission import AdmissionQueue, Grant
from agentrt.serving.router.backends.errors import EngineLost, ErrorInfo, engine_error
from agentrt.serving.router.backends.openai_wire import (
    ChunkDecoder,
    PriorityOrder,
    RemoteStreamError,
    endpoint,
    error_from_response,
    request_body,
)

log = get_logger("agentrt.serving.remote")

RemoteKind = Literal["vllm", "sglang", "agentrt", "openai", "llamacpp"]
_DEFAULT_ORDER: dict[str, PriorityOrder] = {
    "vllm": "lower_first",
    "sglang": "higher_first",
    "agentrt": "lower_first",
    "openai": "none",  # OpenAI's own API and most other servers have no priority field
    "llamacpp": "none",
}
# Kinds whose server may say its slot count at /props (llama.cpp's server does).
_ASK_SLOTS = ("openai", "llamacpp")
# Connection-level failures: the server is gone or unreachable, not unhappy with this call.
_UNREACHABLE = (httpx.TransportError,)
# Within a call, only a refused connection says the server is gone. A read timeout, a cut or
# reset stream, or one that ends early fails that call alone (each call has its own connection):
# the router then checks the server's health rather than failing every call in flight there.
_REFUSED = (httpx.ConnectError, httpx.ConnectTimeout)


class RemoteBackendConfig(msgspec.Struct, kw_only=True, frozen=True):
    """One ``--backend``: where it is, what it is, and how to talk to it."""

    url: str  # base URL, with or without the trailing /v1
    kind: RemoteKind = "openai"
    priority_order: PriorityOrder | None = None  # None: the kind's default
    api_key: str | None = None
    model: str | None = (
        None  # the model name to ask for; default: the request's, else the server's first
    )
    max_model_len: int = 32768  # used when the server's /v1/models does not say
    connect_timeout: float = 5.0
    read_timeout: float = 600.0  # longest silence inside one streamed call
    max_connections: int = 1024
    # Calls in flight on the server; the rest wait in agentrt in the policy's order.
    # None: the server's slot count where it says it (llama.cpp's /props), else no bound.
    max_inflight: int | None = None
    # Calls sent beyond max_inflight, in the policy's order, to wait in the server's own queue:
    # a slot that frees starts one at once instead of idling until the next call arrives.
    queue_ahead: int = 1
    # On llama.cpp, send each call to the slot that holds its program's context (id_slot).
    slot_affinity: bool = True
    # On llama.cpp started with --slot-save-path: save a program's slot before another takes it
    # and restore it for the program's next call. No call is then queued ahead.
    slot_save: bool = False

    def __post_init__(self) -> None:
        if self.max_inflight is not None and self.max_inflight < 1:
            raise ValueError(f"max_inflight must be >= 1, got {self.max_inflight}")
        if self.queue_ahead < 0:
            raise ValueError(f"queue_ahead must be >= 0, got {self.queue_ahead}")

    @property
    def order(self) -> PriorityOrder:
        return self.priority_order or _DEFAULT_ORDER[self.kind]

    @property
    def root(self) -> str:
        url = self.url.rstrip("/")
        return url[: -len("/v1")] if url.endswith("/v1") else url


def parse_backend(spec: str) -> RemoteBackendConfig:
    """Parse a ``--backend`` value: ``[KIND+]URL[,max_inflight=N][,queue_ahead=N]``
    (e.g. ``sglang+http://gpu1:30000``, ``vllm+http://gpu1:8000,max_inflight=256``)."""
    spec, _, options = spec.partition(",")
    bounds: dict[str, int] = {}
    for option in filter(None, options.split(",")):
        name, _, value = option.partition("=")
        least, most = {
            "max_inflight": (1, None),
            "queue_ahead": (0, None),
            "slot_save": (0, 1),
        }.get(name, (1, 0))
        if not value.isdigit() or int(value) < least or (most is not None and int(value) > most):
            raise ValueError(
                f"backend option {option!r}: expected max_inflight=N (N >= 1), "
                "queue_ahead=N (N >= 0) or slot_save=0|1"
            )
        bounds[name] = int(value)
    options_ = {
        "max_inflight": bounds.get("max_inflight"),
        "queue_ahead": bounds.get("queue_ahead", 1),
        "slot_save": bool(bounds.get("slot_save", 0)),
    }
    kind, sep, url = spec.partition("+")
    if sep and kind in _DEFAULT_ORDER:
        return msgspec.convert({"url": url, "kind": kind, **options_}, RemoteBackendConfig)
    if not spec.startswith(("http://", "https://")):
        raise ValueError(
            f"backend {spec!r} must be an http(s) URL, optionally prefixed with "
            "vllm+, sglang+, agentrt+, llamacpp+ or openai+"
        )
    return msgspec.convert({"url": spec, **options_}, RemoteBackendConfig)


def program_headers(tag: ProgramTag | None, call_id: str) -> dict[str, str]:
    """Headers that carry the program to the remote server (``x-session-id`` and the agentrt ones)."""
    if tag is None:
        return {"x-request-id": call_id}
    headers = format_headers(
        program_id=header_safe_id(tag.program_id),
        thread_id=header_safe_id(tag.thread_id) if tag.thread_id else "",
        parent_call_id=header_safe_id(tag.parent_call_id) if tag.parent_call_id else None,
        call_id=header_safe_id(call_id),
    )
    headers["x-request-id"] = call_id
    return {name: value for name, value in headers.items() if value}


def header_safe_id(value: str) -> str:
    """``value`` if it is a valid program-header id, else a stable digest of it.

    Tenant-scoped program ids (``tenant/program``) are not valid header ids;
    the remote server only needs a stable, distinct key per program.
    """
    try:
        parse_headers({PROGRAM: value})
        return value
    except HeaderError:
        return "h-" + hashlib.sha256(value.encode()).hexdigest()[:40]


class RemoteBackend:
    """An :class:`EngineClient` that forwards calls to one OpenAI-compatible server."""

    program_aware = (
        False  # the router sends the program's priority rather than relying on the server
    )

    def __init__(
        self,
        engine_id: str,
        config: RemoteBackendConfig,
        *,
        start_timeout: float = 30.0,
        scheduler: SchedulerConfig | None = None,
    ) -> None:
        self.engine_id = engine_id
        self.config = config
        self.start_timeout = start_timeout
        self.admission = AdmissionQueue(
            scheduler, limit=config.max_inflight, ahead=self._ahead(config.max_inflight, False)
        )
        self._client: httpx.AsyncClient | None = None
        self._down_reason = "not started"
        self._models: list[ModelInfo] = []
        self._running = 0
        # llama.cpp slot save/restore: threads whose slot was given to another (the save
        # asked for), contexts saved, and contexts restored for their thread's next call.
        self._slots_lost = 0
        self._slots_saved = 0
        self._slots_restored = 0
        self._run_scope: anyio.CancelScope | None = None
        self._tool_route = True  # False once the server answered that it has no tool route

    # -- lifecycle ---------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Connect, learn the served models, report started, and hold the connection pool until cancelled."""
        c = self.config
        headers = {"authorization": f"Bearer {c.api_key}"} if c.api_key else {}
        client = httpx.AsyncClient(
            base_url=c.root,
            headers=headers,
            timeout=httpx.Timeout(c.read_timeout, connect=c.connect_timeout),
            limits=httpx.Limits(max_connections=c.max_connections, max_keepalive_connections=64),
        )
        with anyio.CancelScope() as self._run_scope:
            try:
                with anyio.fail_after(self.start_timeout):
                    self._models = await self._fetch_models(client)
                    slots = await self._fetch_slots(client)
                self._admit_by(slots)
                self._client = client
                self._down_reason = ""
                log.info(
                    "remote_up",
                    engine_id=self.engine_id,
                    url=c.root,
                    kind=c.kind,
                    models=[m.id for m in self._models],
                    max_inflight=self.admission.limit,
                    slots=slots is not None and c.slot_affinity,
                )
                task_status.started()
                await anyio.sleep_forever()
            finally:
                self._client = None
                self._down_reason = "disconnected"
                with anyio.CancelScope(shield=True):
                    await client.aclose()

    async def _fetch_models(self, client: httpx.AsyncClient) -> list[ModelInfo]:
        try:
            response = await client.get("/v1/models")
        except _UNREACHABLE as e:
            raise EngineLost(f"backend {self.config.root} unreachable: {e!r}") from None
        if response.status_code != 200:
            info = error_from_response(response.status_code, response.content, None)
            info.message = (
                f"{self.config.root}/v1/models answered {response.status_code}: {info.message}"
            )
            raise engine_error(info)
        data = response.json().get("data", [])
        return [
            ModelInfo(
                id=str(m["id"]),
                max_model_len=int(m.get("max_model_len") or self.config.max_model_len),
                owned_by=str(m.get("owned_by") or self.config.kind),
            )
            for m in data
        ]

    async def _fetch_slots(self, client: httpx.AsyncClient) -> int | None:
        """The server's slot count when it says it (llama.cpp's ``/props`` ``total_slots``)."""
        if self.config.kind not in _ASK_SLOTS:
            return None
        try:
            response = await client.get("/props")
        except _UNREACHABLE as e:
            raise EngineLost(f"backend {self.config.root} unreachable: {e!r}") from None
        if response.status_code != 200:
            return None
        try:
            slots = response.json().get("total_slots")
        except (ValueError, AttributeError):
            return None
        return slots if isinstance(slots, int) and slots >= 1 else None

    def _admit_by(self, slots: int | None) -> None:
        """Bound calls in flight by the configured count, else by the slots the server has."""
        limit = self.config.max_inflight or slots
        affinity = slots is not None and self.config.slot_affinity and limit == slots
        save = affinity and self.config.slot_save
        self.admission.configure(limit, ahead=self._ahead(limit, save), slots=affinity, save=save)

    def _ahead(self, limit: int | None, save: bool) -> int:
        return self.config.queue_ahead if limit is not None and not save else 0

    async def close(self) -> None:
        if self._run_scope is not None:
            self._run_scope.cancel()

    # -- EngineClient ------------------------------------------------------

    def _live_client(self) -> httpx.AsyncClient:
        if self._client is None:
            raise EngineLost(f"engine {self.engine_id} is unavailable: {self._down_reason}")
        return self._client

    def _model_for(self, request: GenerationRequest) -> str:
        if self.config.model:
            return self.config.model
        if request.model:
            return request.model
        return self._models[0].id if self._models else ""

    def remote_priority(self, priority: int | None) -> int | None:
        """Our priority (lower runs sooner) in the server's own order, or None when it takes none."""
        if priority is None or self.config.order == "none":
            return None
        return priority if self.config.order == "lower_first" else -priority

    async def generate(self, request: GenerationRequest) -> AsyncIterator[TokenEvent]:
        client = self._live_client()
        body = request_body(
            request, self._model_for(request), self.remote_priority(request.priority)
        )
        headers = program_headers(request.program, request.call_id)
        timings = Timings(arrival=request.arrival_time or time.monotonic())
        decoder = ChunkDecoder(request.call_id, chat=request.messages is not None)
        tag = request.program
        grant = await self.admission.acquire(
            request.call_id,
            tag.program_id if tag else None,
            tag.thread_id if tag else "",
            tag.attained_service if tag else 0.0,
        )
        admitted = time.monotonic()
        timings.queue_time = grant.wait
        if grant.slot is not None:
            body["id_slot"] = grant.slot
            body["cache_prompt"] = True
        self._running += 1
        released = False
        try:
            if grant.slot is not None:
                await self._swap_slot(client, grant)
            async with client.stream(
                "POST", endpoint(request), json=body, headers=headers
            ) as response:
                if response.status_code != 200:
                    content = await response.aread()
                    raise engine_error(
                        error_from_response(
                            response.status_code, content, response.headers.get("retry-after")
                        )
                    )
                timings.first_scheduled = time.monotonic()
                async for payload in _sse_data(response):
                    if payload == b"[DONE]":
                        break
                    for event in decoder.feed(payload):
                        if timings.first_token is None:
                            timings.first_token = time.monotonic()
                        yield event
            # The server has sent its last byte: its slot is free now, not once the caller has
            # taken the final events.
            released = True
            self._running -= 1
            self.admission.release(grant)
            final = decoder.finish()
            if not final:
                raise EngineUnavailable(
                    f"engine {self.engine_id} ended the stream before finishing the call"
                )
            timings.finished = time.monotonic()
            # A call sent ahead waited in the server's queue until a slot freed for it: that is
            # queue time, and only the rest is the service its program is charged.
            started = grant.started if grant.started is not None else admitted
            timings.queue_time = grant.wait + max(0.0, started - admitted)
            timings.model_time = timings.finished - max(started, admitted)
            if timings.first_token is None:
                timings.first_token = timings.finished
            final[-1].timings = timings
            for event in final:
                yield event
        except _REFUSED as e:
            raise EngineLost(f"engine {self.engine_id} is unavailable: {e!r}") from None
        except httpx.TimeoutException as e:
            raise EngineUnavailable(
                f"engine {self.engine_id} timed out: {type(e).__name__} after {self.config.read_timeout:g}s"
            ) from None
        except httpx.TransportError as e:
            raise EngineUnavailable(f"engine {self.engine_id} lost the call: {e!r}") from None
        except RemoteStreamError as e:
            raise engine_error(e.info) from None
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            raise engine_error(
                ErrorInfo(
                    status=502,
                    type="bad_gateway",
                    message=f"engine {self.engine_id} sent an invalid chunk: {e}",
                )
            ) from None
        finally:
            if not released:
                self._running -= 1
                self.admission.release(grant)

    async def _swap_slot(self, client: httpx.AsyncClient, grant: Grant) -> None:
        """Save the context of the thread the slot held, then restore the granted thread's."""
        assert grant.slot is not None
        if grant.save is not None:
            self._slots_lost += 1
            if await self._slot_action(client, grant.slot, "save", grant.save):
                self._slots_saved += 1
            else:
                self.admission.unsaved(grant.save)
        if grant.restore is not None and await self._slot_action(
            client, grant.slot, "restore", grant.restore
        ):
            self._slots_restored += 1

    async def _slot_action(
        self, client: httpx.AsyncClient, slot: int, action: str, key: str
    ) -> bool:
        """Save or restore a thread's context in ``slot``; a refusal only costs recomputing it."""
        filename = "agentrt-" + hashlib.sha256(key.encode()).hexdigest()[:32] + ".bin"
        response = await client.post(
            f"/slots/{slot}", params={"action": action}, json={"filename": filename}
        )
        if response.status_code == 200:
            return True
        log.warning(
            "slot_action_failed",
            engine_id=self.engine_id,
            action=action,
            slot=slot,
            status=response.status_code,
            body=response.text[:200],
        )
        return False

    async def abort(self, call_id: str) -> None:
        """Calls are aborted by closing their stream (the router closes the generator); nothing to send."""

    async def check_health(self) -> None:
        client = self._live_client()
        try:
            response = await client.get("/health", timeout=self.config.connect_timeout)
        except _UNREACHABLE as e:
            raise EngineLost(f"engine {self.engine_id} is unavailable: {e!r}") from None
        if response.status_code != 200:
            raise EngineLost(
                f"engine {self.engine_id} health check answered {response.status_code}"
            )

    def stats(self) -> EngineStats:
        return EngineStats(
            running=self._running,
            waiting=self.admission.waiting,
            kv_contexts_lost=self._slots_lost,
            kv_contexts_offloaded=self._slots_saved,
            kv_contexts_restored=self._slots_restored,
        )

    def models(self) -> list[ModelInfo]:
        return list(self._models)

    async def start_program(self, tag: ProgramTag) -> None:
        """Programs travel with each call's headers; the server creates them on their first call."""

    async def end_program(self, program_id: str) -> None:
        """Another agentrt frees the program's entry at once (``DELETE /v1/programs/{id}``); others need nothing."""
        self.admission.end_program(program_id)
        if self.config.kind != "agentrt" or self._client is None:
            return
        try:
            await self._client.delete(f"/v1/programs/{header_safe_id(program_id)}")
        except _UNREACHABLE as e:
            log.warning("end_program_failed", engine_id=self.engine_id, error=repr(e))

    async def tool_event(self, program_id: str, event: ToolEvent) -> None:
        """Another agentrt hears the program's tool signal (``POST /v1/programs/{id}/tool``, the
        id as the calls' headers name it); other servers have no such route and are skipped,
        and so is an agentrt that answers 404 or 405 (one without the route), from then on."""
        client = self._client
        if self.config.kind != "agentrt" or client is None or not self._tool_route:
            return
        path = f"/v1/programs/{quote(header_safe_id(program_id), safe='')}/tool"
        try:
            response = await client.post(
                path,
                content=msgspec.json.encode(event),
                headers={"content-type": "application/json"},
            )
        except _UNREACHABLE as e:
            log.warning("tool_event_failed", engine_id=self.engine_id, error=repr(e))
            return
        if response.status_code in (404, 405):
            self._tool_route = False
            log.info("remote takes no tool signals; not sending it more", engine_id=self.engine_id)
        elif response.status_code >= 400:
            log.warning(
                "tool_event_failed",
                engine_id=self.engine_id,
                status=response.status_code,
                body=response.text[:200],
            )


async def _sse_data(response: httpx.Response) -> AsyncIterator[bytes]:
    """The ``data`` of each server-sent event, as bytes (multi-line data joined with newlines).

    Events are cut out of the received bytes directly: no decoding to text and
    no per-line strings, so a token costs one slice before msgspec decodes it.
    """
    pending = b""
    async for received in response.aiter_bytes():
        pending = pending + received if pending else received
        if b"\r" in pending:  # CRLF or CR line ends (rare): normalised, a CR at the end kept
            held = pending.endswith(b"\r")  # back in case an LF comes next
            pending = pending[:-1] if held else pending
            pending = pending.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            pending += b"\r" if held else b""
        start = 0
        while (end := pending.find(b"\n\n", start)) >= 0:
            data = _event_data(pending[start:end])
            start = end + 2
            if data is not None:
                yield data
        pending = pending[start:]
    pending = pending.replace(b"\r", b"\n").strip(b"\n")
    if pending:
        data = _event_data(pending)
        if data is not None:
            yield data


def _event_data(event: bytes) -> bytes | None:
    """The data of one event (its ``data:`` lines joined), None when it has none."""
    if event.startswith(b"data: ") and b"\n" not in event:
        return event[6:]  # the shape every OpenAI-compatible server sends
    lines = [
        line[5:].removeprefix(b" ") for line in event.split(b"\n") if line.startswith(b"data:")
    ]
    return b"\n".join(lines) if lines else None
