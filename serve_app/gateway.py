"""The ingress deployment: one FastAPI app per replica, talking to the Transcriber."""

from __future__ import annotations

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from serve_app.main import create_app
from serve_app.settings import Settings
from serve_app.store import open_store
from serve_app.transcriber_client import HandleClient


@serve.deployment(
    name="Gateway",
    max_ongoing_requests=256,
    ray_actor_options={"num_cpus": 0.25},
)
@serve.ingress()
class Gateway:
    """Auth, CORS, uploads and job records; dispatches jobs to the Transcriber."""

    async def __init__(self, settings: Settings, transcriber: DeploymentHandle) -> None:  # type: ignore[misc]
        store = open_store(
            settings.store_url,
            pool_size=settings.database_pool_size,
            statement_timeout_s=settings.database_statement_timeout_s,
        )
        self._app = create_app(settings, HandleClient(transcriber), store)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return self._app

    def check_health(self) -> None:
        """Ray calls this periodically: the job store must answer."""
        self._app.state.store.get("health-check")
