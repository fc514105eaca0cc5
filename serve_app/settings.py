"""Server settings, read from the environment (the seed's names)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from serve_app.errors import describe
from serve_app.store import backend_of


class SettingsError(ValueError):
    """The environment asks for something the server will not run with."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", env_ignore_empty=True)

    whisper_api_key: SecretStr | None = None
    """Bearer token(s) clients must send; comma-separated for several."""

    require_auth: bool = True
    """Refuse requests without a valid token (every route but /health)."""

    allowed_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Comma-separated exact origins allowed by CORS; empty allows none."""

    use_sqlite: bool = True
    """Keep jobs in SQLite (they survive restarts); false: in memory, for development only."""

    database_url: SecretStr = SecretStr("")
    """Where jobs are kept, as a database URL: sqlite:///PATH, sqlite:// (memory) or
    postgresql://USER:PASSWORD@HOST/DB. Unset: the seed's USE_SQLITE and DB_PATH say
    (DB_PATH, or DATA_DIR/whisper-jobs.db). Secret: it may hold a password."""

    database_pool_size: int = Field(default=5, ge=1, le=100)
    """PostgreSQL: connections each gateway replica keeps (and as many more at a peak)."""

    database_statement_timeout_s: float = Field(default=30, gt=0)
    """PostgreSQL: a statement running longer is cancelled (the job's try fails and is retried)."""

    data_dir: Path = Path("data")
    """Folder for the database, spooled uploads and model caches."""

    db_path: Path | None = None
    """SQLite file; defaults to DATA_DIR/whisper-jobs.db."""

    max_file_size_mb: float = Field(default=25, gt=0)
    """Largest upload accepted, in MB (10^6 bytes)."""

    whisper_model: str = "tiny.en"
    """Bundled name (tiny.en, base), a local CTranslate2 folder, or a faster-whisper name."""

    whisper_engine: Literal["auto", "ctranslate2", "torch"] = "auto"
    """auto: CTranslate2 on CPU, and on CUDA where its wheel can use the GPU; torch where not."""

    whisper_device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto: cuda when the Ray cluster has GPUs, else cpu."""

    whisper_compute_type: str = "auto"
    """auto: CTranslate2 int8 on CPU, float16 on CUDA; torch float32 on CPU, float16 on CUDA
    (float16, bfloat16 or float32 set the torch engine's dtype)."""

    whisper_cpu_threads: int = Field(default=0, ge=0)
    """Threads per Whisper replica on CPU; 0 uses every core."""

    whisper_workers: int = Field(default=0, ge=0, le=8)
    """Batches one Whisper replica decodes at once (model copies); 0: 2 on CPU, 1 on CUDA."""

    max_audio_seconds: float = Field(default=2 * 3600, gt=0)
    """Longest audio accepted, in seconds; longer files are refused at submit."""

    max_queued_jobs: int = Field(default=1000, ge=1)
    """Jobs queued or running at once; past it a submit gets 429 with Retry-After."""

    max_jobs_per_key: int = Field(default=100, ge=1)
    """Jobs one API key may have queued or running at once; past it a submit gets 429."""

    max_queued_audio_s_per_key: float = Field(default=4 * 3600, gt=0)
    """Seconds of audio one API key may have queued or running; past it a submit gets 429."""

    max_uploads_per_key: int = Field(default=64, ge=1)
    """Uploads one API key may have in progress at once, per gateway replica; past it 429.

    A gateway takes 256 requests at once (serve_config.yaml): one key's stalled uploads
    leave the rest to others (a burst of 32 uploads from one client is normal)."""

    upload_idle_timeout_s: float = Field(default=30, gt=0)
    """An upload that sends nothing for this long is cut off (408)."""

    upload_timeout_s: float = Field(default=600, gt=0)
    """An upload must arrive whole within this long (25 MB in 600 s: 42 KB/s); else 408."""

    status_poll_interval_s: float = Field(default=3.0, ge=0, le=10)
    """A job still queued or running is read at most this often without ``wait``: a read is
    answered when the job ends or at its next tick, every this long from its creation
    (0: no pacing)."""

    status_reads_per_s_per_key: float = Field(default=50, gt=0)
    """Status reads one API key may make per second, per gateway replica (bursts of twice
    that); past it 429 with Retry-After. Paced polls of 32 clients make about 10."""

    job_retention_hours: float | None = Field(default=None, gt=0)
    """Finished jobs and transcripts are deleted this long after they end; unset keeps them."""

    max_attempts: int = Field(default=3, ge=1)
    """Tries per job before it ends in error (a replica that died, an engine crash, a timeout)."""

    attempt_timeout_base_s: float = Field(default=120, gt=0)
    """One try of a job may take this long plus ATTEMPT_TIMEOUT_PER_AUDIO_S per second of audio."""

    attempt_timeout_per_audio_s: float = Field(default=2.0, ge=0)
    """Seconds allowed per second of audio, on top of ATTEMPT_TIMEOUT_BASE_S."""

    queue_timeout_s: float = Field(default=3600, gt=0)
    """Time a job may wait in the queue, on top of its tries, before it ends in error."""

    lease_seconds: float = Field(default=20, gt=0)
    """How long a claimed job is held without a heartbeat before another gateway may retry it."""

    webhook_allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Hosts a job's callback_url may name (host, host:port, *.domain); empty: webhooks off."""

    webhook_secret: SecretStr | None = None
    """Key of the HMAC-SHA256 in X-Whisper-Signature; required with WEBHOOK_ALLOWED_HOSTS."""

    webhook_max_attempts: int = Field(default=8, ge=1)
    """Tries per webhook delivery before it is marked failed."""

    webhook_retry_base_s: float = Field(default=2.0, gt=0)
    """Wait before the second try; it doubles for each later one (at most an hour)."""

    webhook_timeout_s: float = Field(default=10.0, gt=0)
    """How long one try waits for the receiver's answer."""

    @field_validator("allowed_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [o.strip().rstrip("/") for o in value.split(",") if o.strip()]
        return value

    @field_validator("webhook_allowed_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        hosts = [h.strip().lower() for h in value.split(",") if h.strip()]
        for host in hosts:
            name, _, port = host.partition(":")
            if not name or "/" in host or (port and not port.isdigit()):
                raise ValueError(
                    f"WEBHOOK_ALLOWED_HOSTS entry {host!r} is not a host, host:port or *.domain"
                )
        return hosts

    @model_validator(mode="after")
    def _database(self) -> Settings:
        if not self.database_url.get_secret_value():
            url = f"sqlite:///{self.database_file}" if self.use_sqlite else "sqlite://"
            self.database_url = SecretStr(url)
        return self

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: SecretStr) -> SecretStr:
        if value.get_secret_value():
            backend_of(value.get_secret_value())
        return value

    @property
    def store_url(self) -> str:
        """DATABASE_URL, or what the seed's USE_SQLITE and DB_PATH say (never log it)."""
        return self.database_url.get_secret_value()

    @model_validator(mode="after")
    def _fail_closed(self) -> Settings:
        if self.webhook_allowed_hosts and self.webhook_secret is None:
            raise ValueError(
                "WEBHOOK_ALLOWED_HOSTS is set but WEBHOOK_SECRET is empty: set WEBHOOK_SECRET "
                "to a secret that receivers use to check the X-Whisper-Signature header"
            )
        if self.require_auth and not self.api_keys:
            raise ValueError(
                "REQUIRE_AUTH is true (the default) but WHISPER_API_KEY is empty: "
                "set WHISPER_API_KEY to a secret clients will send as "
                "'Authorization: Bearer <key>' (or REQUIRE_AUTH=false for local development only)"
            )
        return self

    @property
    def api_keys(self) -> list[str]:
        if self.whisper_api_key is None:
            return []
        raw = self.whisper_api_key.get_secret_value()
        return [k.strip() for k in raw.split(",") if k.strip()]

    @property
    def database_file(self) -> Path:
        return (self.db_path or self.data_dir / "whisper-jobs.db").resolve()

    @property
    def upload_dir(self) -> Path:
        return (self.data_dir / "uploads").resolve()

    @property
    def model_cache_dir(self) -> Path:
        return (self.data_dir / "models").resolve()

    def attempt_timeout(self, audio_seconds: float | None) -> float:
        """How long one try of a job with this much audio may take."""
        audio = audio_seconds if audio_seconds is not None else self.max_audio_seconds
        return self.attempt_timeout_base_s + self.attempt_timeout_per_audio_s * audio

    def job_deadline(self, audio_seconds: float | None) -> float:
        """Seconds after submission by which a job has ended, one way or the other."""
        return self.queue_timeout_s + self.max_attempts * self.attempt_timeout(audio_seconds)

    @property
    def max_file_bytes(self) -> int:
        return int(self.max_file_size_mb * 1_000_000)


@lru_cache
def get_settings() -> Settings:
    """Settings from the environment, read once per process (not at import)."""
    try:
        return Settings()
    except ValidationError as exc:
        raise SettingsError(describe(exc.errors(), "settings", upper=True)) from None
