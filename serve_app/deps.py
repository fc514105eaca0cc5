"""Objects routes depend on, set on ``app.state`` by ``create_app``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request

from serve_app.ends import EndWatcher
from serve_app.pacing import StatusPacer
from serve_app.runner import JobRunner
from serve_app.settings import Settings
from serve_app.store import JobStore


def _state(name: str) -> Any:
    # async: FastAPI runs a plain ``def`` dependency in a worker thread, a hop per
    # dependency on every request (a status read had five).
    async def get(request: Request) -> Any:
        return getattr(request.app.state, name)

    return Depends(get)


SettingsDep = Annotated[Settings, _state("settings")]
StoreDep = Annotated[JobStore, _state("store")]
RunnerDep = Annotated[JobRunner, _state("runner")]
EndsDep = Annotated[EndWatcher, _state("ends")]
PacerDep = Annotated[StatusPacer, _state("pacer")]
