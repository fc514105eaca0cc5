"""The gateway's custom metrics (ray.serve.metrics): Ray exports them to Prometheus.

Ray prefixes every name with ``ray_`` and adds the deployment, replica and
application tags; Prometheus adds ``_total``, ``_bucket``, ``_sum`` and
``_count``. The Transcriber's batch metrics are in deployments/transcriber.py.
Outside a Ray worker (unit tests) recording does nothing.
"""

from __future__ import annotations

from ray.serve import metrics

LATENCY_BUCKETS = [0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600]
RTF_BUCKETS = [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5]


class JobMetrics:
    """Jobs submitted, ended by status, queue depth, latency, audio seconds, real-time factor."""

    def __init__(self) -> None:
        self.submitted = metrics.Counter(
            "whisper_jobs_submitted", description="Jobs accepted (POST /transcribe, /v1/audio/*)."
        )
        self.finished = metrics.Counter(
            "whisper_jobs_finished",
            description="Jobs that ended, by status (done, error) and error code.",
            tag_keys=("status", "error_code"),  # type: ignore[arg-type]
        )
        self.queue_depth = metrics.Gauge(
            "whisper_queue_depth",
            description="Jobs queued or processing, as the gateway's last sweep counted them.",
            tag_keys=("status",),
        )
        self.latency = metrics.Histogram(
            "whisper_job_latency_seconds",
            description="From submit to the end of a job (done or error).",
            boundaries=LATENCY_BUCKETS,
        )
        self.audio_seconds = metrics.Counter(
            "whisper_audio_seconds", description="Seconds of audio in jobs transcribed (done)."
        )
        self.real_time_factor = metrics.Histogram(
            "whisper_real_time_factor",
            description="Time of a job's successful try divided by its audio length.",
            boundaries=RTF_BUCKETS,
        )
        self.webhooks = metrics.Counter(
            "whisper_webhook_deliveries",
            description="Webhook tries, by outcome (delivered, retry, failed).",
            tag_keys=("outcome",),
        )

    def job_submitted(self) -> None:
        self.submitted.inc()

    def job_finished(
        self,
        *,
        error_code: str | None,
        latency_s: float | None,
        audio_s: float | None,
        run_s: float | None,
    ) -> None:
        status = "done" if error_code is None else "error"
        self.finished.inc(tags={"status": status, "error_code": error_code or ""})
        if latency_s is not None:
            self.latency.observe(max(latency_s, 0.0))
        if error_code is None and audio_s:
            self.audio_seconds.inc(audio_s)
            if run_s is not None:
                self.real_time_factor.observe(run_s / audio_s)

    def queue(self, queued: int, processing: int) -> None:
        self.queue_depth.set(queued, tags={"status": "queued"})
        self.queue_depth.set(processing, tags={"status": "processing"})

    def webhook(self, outcome: str) -> None:
        self.webhooks.inc(tags={"outcome": outcome})
