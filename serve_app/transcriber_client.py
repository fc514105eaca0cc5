"""How the gateway reaches the Whisper deployment: a streaming DeploymentHandle, or a
local Transcriber in tests. Options go in and events come back as deployments/protocol.py
declares them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

from deployments.protocol import (
    Decoding,
    End,
    Event,
    Finished,
    Progress,
    Queued,
    Rejected,
    Stage,
    TranscribeOptions,
)

ProgressFn = Callable[[float, str | None], Awaitable[None]]
"""Called with the share decoded and, once known, the audio's language."""
StageFn = Callable[[Stage], None]


class TranscriberClient(Protocol):
    """How the gateway reaches the Whisper deployment (a handle, or a local object in tests)."""

    async def transcribe(
        self,
        audio: bytes,
        options: TranscribeOptions,
        owner: str,
        more_coming: bool,
        on_progress: ProgressFn | None = None,
        on_stage: StageFn | None = None,
    ) -> End: ...


async def follow(
    events: AsyncIterator[Event],
    on_progress: ProgressFn | None,
    on_stage: StageFn | None = None,
) -> End:
    """Pass a Transcriber's progress and stage events on; return its end."""
    async for event in events:
        match event:
            case Queued() | Decoding():
                if on_stage is not None:
                    on_stage(event)
            case Progress(share, language):
                if on_progress is not None:
                    await on_progress(share, language)
            case Finished() | Rejected():
                return event
    raise RuntimeError("the Transcriber ended its stream without a result")


class HandleClient:
    """A Ray Serve DeploymentHandle to the Transcriber (streaming); audio goes by value."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle.options(stream=True)

    async def transcribe(
        self,
        audio: bytes,
        options: TranscribeOptions,
        owner: str,
        more_coming: bool,
        on_progress: ProgressFn | None = None,
        on_stage: StageFn | None = None,
    ) -> End:
        events = self._handle.transcribe.remote(audio, options, owner, more_coming)
        return await follow(events, on_progress, on_stage)
