"""The Ray app builder (`build_app`): the one place that wires the graph
(serve run, serve_config.yaml, tests)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr
from ray import serve

from deployments.interface import EngineConfig
from deployments.transcriber import TranscriberDeployment
from serve_app.gateway import Gateway
from serve_app.settings import Settings, get_settings
from serve_app.store import shareable

logger = logging.getLogger("ray.serve.whisper.builder")


class AppArgs(BaseModel):
    """Topology arguments (``args:`` in serve_config.yaml); the environment holds the rest."""

    model_config = ConfigDict(extra="forbid")

    num_gpus: float | Literal["auto"] = Field(
        default="auto", description="GPUs per Whisper replica; auto: 1 when the device is cuda"
    )
    num_cpus: float = Field(default=0.5, ge=0, description="Ray CPUs per Whisper replica")
    transcriber_resources: dict[str, float] = Field(
        default_factory=dict,
        description="Ray custom resources per Whisper replica (which nodes take them)",
    )
    gateway_resources: dict[str, float] = Field(
        default_factory=dict,
        description="Ray custom resources per gateway replica (which nodes take them)",
    )


def _cluster_has_gpu() -> bool:
    import ray

    if ray.is_initialized():
        return float(ray.cluster_resources().get("GPU", 0)) > 0
    # `serve run module:app` builds before Ray starts: ask the NVIDIA driver about this
    # machine (the builder imports no engine).
    gpus = Path("/proc/driver/nvidia/gpus")
    return gpus.is_dir() and any(gpus.iterdir())


def resolve_device(settings: Settings) -> Literal["cpu", "cuda"]:
    if settings.whisper_device == "auto":
        return "cuda" if _cluster_has_gpu() else "cpu"
    return settings.whisper_device


def build_app(args: dict[str, Any] | None = None) -> serve.Application:
    """Bind the Gateway to an (autoscaled) Transcriber from settings and args."""
    app_args = AppArgs.model_validate(args or {})
    settings = get_settings()
    # Pin relative paths where the operator started the server, not where a replica runs.
    settings = settings.model_copy(
        update={
            "data_dir": settings.data_dir.resolve(),
            "database_url": SecretStr(shareable(settings.store_url)),
        }
    )
    device = resolve_device(settings)
    gpus = app_args.num_gpus
    if gpus == "auto":
        gpus = 1.0 if device == "cuda" else 0.0
    engine = EngineConfig(
        model=settings.whisper_model,
        engine=settings.whisper_engine,
        device=device,
        compute_type=settings.whisper_compute_type,
        cpu_threads=settings.whisper_cpu_threads,
        workers=settings.whisper_workers,
        cache_dir=str(settings.model_cache_dir),
        max_audio_seconds=settings.max_audio_seconds,
    )
    logger.info(
        "whisper model %s on %s (engine %s), %g GPU per replica",
        engine.model,
        device,
        engine.engine,
        gpus,
    )
    transcriber = TranscriberDeployment.options(
        ray_actor_options={
            "num_cpus": app_args.num_cpus,
            "num_gpus": gpus,
            "resources": app_args.transcriber_resources,
        }
    ).bind(engine)
    gateway: Any = Gateway  # a serve.Deployment (the decorator's type is not the class's)
    if app_args.gateway_resources:
        gateway = gateway.options(
            ray_actor_options={
                **gateway.ray_actor_options,
                "resources": app_args.gateway_resources,
            }
        )
    return gateway.bind(settings, transcriber)
