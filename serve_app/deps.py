"""Objects routes depend on, set on ``app.state`` by ``create_app``."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from serve_app.dispatcher import Dispatcher
from serve_app.jobs import JobStore
from serve_app.settings import Settings


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _store(request: Request) -> JobStore:
    store: JobStore = request.app.state.store
    return store


def _dispatcher(request: Request) -> Dispatcher:
    dispatcher: Dispatcher = request.app.state.dispatcher
    return dispatcher


SettingsDep = Annotated[Settings, Depends(_settings)]
StoreDep = Annotated[JobStore, Depends(_store)]
DispatcherDep = Annotated[Dispatcher, Depends(_dispatcher)]
