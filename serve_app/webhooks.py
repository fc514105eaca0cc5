"""Webhooks: when a job ends, POST its final JSON to the job's ``callback_url``, signed.

Only hosts listed in WEBHOOK_ALLOWED_HOSTS are called: a server that fetches
any URL a client gives it lets clients reach what only the server can (an SSRF
hole), so others are refused at submit. Redirects are not followed, for the
same reason.

Delivery is at least once: the job row carries the delivery state, any gateway
replica delivers what is due (the sweep), a failed try is retried with
exponential backoff up to WEBHOOK_MAX_ATTEMPTS. Receivers check the signature
and may see a delivery twice (after a crash): the job id identifies it.

Signature, as Stripe and Slack do it::

    X-Whisper-Signature: t=<unix time>,v1=<hex HMAC-SHA256(WEBHOOK_SECRET, "<t>.<body>")>
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from collections.abc import Coroutine
from typing import Any
from urllib.parse import urlsplit

import httpx

from serve_app.errors import UploadError
from serve_app.metrics import JobMetrics
from serve_app.schemas import JobPublic
from serve_app.settings import Settings
from serve_app.store import Job, WebhookOutbox

logger = logging.getLogger("ray.serve.whisper.webhooks")

SIGNATURE_HEADER = "X-Whisper-Signature"
MAX_URL_LENGTH = 2048
# Deliveries one gateway makes at once.
MAX_DELIVERIES = 16


def check_callback_url(url: str, settings: Settings) -> str:
    """The URL if the server may call it; else a 400 that says why."""
    allowed = settings.webhook_allowed_hosts
    if not allowed:
        raise UploadError(
            400,
            "callback_url is not accepted here: the server has no WEBHOOK_ALLOWED_HOSTS "
            "(poll GET /transcribe/{job_id}?wait=60 instead)",
            "callback_url",
        )
    if len(url) > MAX_URL_LENGTH:
        raise UploadError(400, f"callback_url is longer than {MAX_URL_LENGTH} characters")
    if any(c.isspace() or not c.isprintable() for c in url.strip()):
        # A tab, CR or LF inside would be refused by the HTTP client at every try.
        raise UploadError(
            400, "callback_url must not contain spaces or control characters", "callback_url"
        )
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise UploadError(400, "callback_url is not a valid URL", "callback_url") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UploadError(
            400, "callback_url must be an http:// or https:// URL with a host", "callback_url"
        )
    if parts.username is not None or parts.password is not None:
        raise UploadError(400, "callback_url must not carry a user or password", "callback_url")
    host = parts.hostname.lower()
    if not any(_host_matches(host, port, entry) for entry in allowed):
        raise UploadError(
            400,
            f"callback_url host {host!r} is not in the server's WEBHOOK_ALLOWED_HOSTS",
            "callback_url",
        )
    return url.strip()


def _host_matches(host: str, port: int | None, entry: str) -> bool:
    """``example.com`` (any port), ``example.com:8443`` (that port), ``*.example.com``."""
    name, _, wanted_port = entry.partition(":")
    if name.startswith("*."):
        name_ok = host.endswith(name[1:]) and host != name[2:]
    else:
        name_ok = host == name
    if not wanted_port:
        return name_ok
    return name_ok and port == int(wanted_port)


def signature(secret: str, body: bytes, timestamp: int) -> str:
    """The X-Whisper-Signature value for ``body`` sent at ``timestamp``."""
    signed = f"{timestamp}.".encode() + body
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify(secret: str, body: bytes, header: str, *, tolerance_s: float = 300) -> bool:
    """What a receiver does: check the HMAC and that the timestamp is recent."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        timestamp = int(fields["t"])
    except (KeyError, ValueError):
        return False
    if abs(time.time() - timestamp) > tolerance_s:
        return False
    expected = signature(secret, body, timestamp)
    return hmac.compare_digest(expected, header)


def backoff_s(attempt: int, settings: Settings) -> float:
    """Wait before try ``attempt + 1``: base, 2 x base, 4 x base... at most an hour."""
    return float(min(settings.webhook_retry_base_s * 2 ** (attempt - 1), 3600.0))


async def post(
    client: httpx.AsyncClient, url: str, body: bytes, *, job_id: str, attempt: int, secret: str
) -> str | None:
    """One try; None when the receiver took it (2xx), else what went wrong (no URL, no body)."""
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "whisper-server-webhook",
        "X-Whisper-Job-Id": job_id,
        "X-Whisper-Delivery-Attempt": str(attempt),
        SIGNATURE_HEADER: signature(secret, body, int(time.time())),
    }
    try:
        response = await client.post(url, content=body, headers=headers)
    except (httpx.HTTPError, httpx.InvalidURL) as exc:  # InvalidURL is not an HTTPError
        return type(exc).__name__
    if response.is_success:
        return None
    if response.is_redirect:
        return f"HTTP {response.status_code} (redirects are not followed)"
    return f"HTTP {response.status_code}"


class Sender:
    """A gateway's webhook deliveries: at least once, from the job rows, any gateway."""

    def __init__(self, outbox: WebhookOutbox, settings: Settings, metrics: JobMetrics) -> None:
        self.outbox = outbox
        self.settings = settings
        self.metrics = metrics
        self._tasks: set[asyncio.Task[None]] = set()
        self._http: httpx.AsyncClient | None = None

    def deliver_soon(self, job_id: str) -> None:
        """A job with a callback_url just ended here: try its delivery now."""
        self._track(self._claim_and_deliver(job_id))

    async def deliver_due(self) -> None:
        """Start the deliveries that are due (retries, those of dead gateways), room allowing."""
        if not self.settings.webhook_allowed_hosts:
            return
        while len(self._tasks) < MAX_DELIVERIES:
            job = await asyncio.to_thread(self.outbox.claim, lease_s=self._lease_s())
            if job is None:
                return
            self._track(self._deliver(job))

    async def stop(self) -> None:
        """Cancel tries in flight (their claims run out; another gateway tries again)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.aclose()

    def _track(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _lease_s(self) -> float:
        return self.settings.webhook_timeout_s + 10

    async def _claim_and_deliver(self, job_id: str) -> None:
        job = await asyncio.to_thread(self.outbox.claim, lease_s=self._lease_s(), job_id=job_id)
        if job is not None:
            await self._deliver(job)

    async def _deliver(self, job: Job) -> None:
        """One try; records delivered, due again after a backoff, or failed."""
        attempt = job.webhook_attempts
        settings = self.settings
        final = attempt >= settings.webhook_max_attempts
        secret = settings.webhook_secret
        try:
            # Checked again: the allow-list may have changed since the submit.
            url = check_callback_url(job.callback_url or "", settings)
        except UploadError as exc:
            error: str | None = exc.message
            final = True
        else:
            assert secret is not None  # Settings require it with allowed hosts
            if self._http is None:
                self._http = httpx.AsyncClient(
                    timeout=settings.webhook_timeout_s, follow_redirects=False
                )
            body = JobPublic.from_job(job).model_dump_json(
                exclude_none=True, exclude={"webhook", "queue_position"}
            )
            error = await post(
                self._http,
                url,
                body.encode(),
                job_id=job.id,
                attempt=attempt,
                secret=secret.get_secret_value(),
            )
        retry_at = None
        if error is not None and not final:
            retry_at = time.time() + backoff_s(attempt, settings)
        await asyncio.to_thread(
            self.outbox.tried, job.id, attempt=attempt, error=error, retry_at=retry_at
        )
        outcome = "delivered" if error is None else ("retry" if retry_at else "failed")
        self.metrics.webhook(outcome)
        # The job id and what happened; never the URL (it may hold a token) or the body.
        log = logger.info if error is None else logger.warning
        log("webhook for job %s: %s (try %d)", job.id, error or "delivered", attempt)
