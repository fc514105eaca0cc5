"""Webhooks: allow-list at submit, signed deliveries to a real receiver, retries, state."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from serve_app.errors import UploadError
from serve_app.settings import Settings
from serve_app.webhooks import check_callback_url, post, signature, verify
from tests.fakes import LocalClient
from tests.receiver import Receiver
from tests.unit.helpers import AUTH, JFK, KEY, make_app, make_settings, uploads

SECRET = "whsec-test-6b1f"


def hooked(tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "webhook_allowed_hosts": "127.0.0.1,*.hooks.example.com,api.example.org:8443",
        "webhook_secret": SECRET,
        "webhook_retry_base_s": 0.05,
    }
    values.update(overrides)
    return make_settings(tmp_path, **values)


def app_with_fast_sweep(settings: Settings) -> TestClient:
    app = make_app(settings, LocalClient())
    app.state.background.sweep_interval_s = 0.05
    return TestClient(app)


def submit_with_callback(c: TestClient, url: str) -> str:
    r = c.post(
        "/transcribe",
        headers=AUTH,
        files={"file": ("jfk.flac", JFK.read_bytes())},
        data={"callback_url": url},
    )
    assert r.status_code == 202, r.text
    return str(r.json()["job_id"])


def wait_webhook(c: TestClient, job_id: str, status: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    body: dict = {}
    while time.monotonic() < deadline:
        body = c.get(f"/transcribe/{job_id}", headers=AUTH).json()
        if body.get("webhook", {}).get("status") == status:
            return body
        time.sleep(0.05)
    raise AssertionError(f"webhook never {status}: {body}")


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("http://127.0.0.1:9000/hook?token=x", True),
        ("https://a.hooks.example.com/in", True),
        ("https://hooks.example.com/in", False),  # *. is for subdomains
        ("https://api.example.org:8443/x", True),
        ("https://api.example.org/x", False),  # another port
        ("https://evil.example.net/x", False),
        ("http://127.0.0.1.evil.net/x", False),
        ("ftp://127.0.0.1/x", False),
        ("http://user:pw@127.0.0.1/x", False),
        ("http://[::1]:80/x", False),
        ("not a url", False),
        ("http://127.0.0.1:99999/x", False),
    ],
)
def test_only_allowed_hosts_may_be_called(tmp_path: Path, url: str, ok: bool) -> None:
    settings = hooked(tmp_path)
    if ok:
        assert check_callback_url(url, settings) == url
    else:
        with pytest.raises(UploadError) as info:
            check_callback_url(url, settings)
        assert info.value.status == 400 and "callback_url" in info.value.message


def test_webhooks_need_a_secret_and_well_formed_hosts(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="WEBHOOK_SECRET"):
        make_settings(tmp_path, webhook_allowed_hosts="hooks.example.com")
    with pytest.raises(ValidationError, match="not a host"):
        make_settings(tmp_path, webhook_allowed_hosts="https://x/y", webhook_secret="s")


def test_signature_verifies_and_rejects_tampering() -> None:
    body = b'{"job_id":"j","status":"done"}'
    header = signature(SECRET, body, int(time.time()))
    assert verify(SECRET, body, header)
    assert not verify(SECRET, body + b" ", header)
    assert not verify("other-secret", body, header)
    stale = signature(SECRET, body, int(time.time()) - 3600)
    assert not verify(SECRET, body, stale)


def test_a_refused_callback_leaves_no_job_and_no_file(tmp_path: Path) -> None:
    with app_with_fast_sweep(hooked(tmp_path)) as c:
        r = c.post(
            "/transcribe",
            headers=AUTH,
            files={"file": ("jfk.flac", JFK.read_bytes())},
            data={"callback_url": "http://169.254.169.254/latest/meta-data"},
        )
        assert r.status_code == 400
        assert "WEBHOOK_ALLOWED_HOSTS" in r.json()["detail"]
        assert c.get("/transcribe", headers=AUTH).json()["jobs"] == []
    assert uploads(tmp_path) == []
    # A server without an allow-list says webhooks are off.
    with TestClient(make_app(make_settings(tmp_path / "off"), LocalClient())) as c:
        r = c.post(
            "/transcribe",
            headers=AUTH,
            files={"file": ("jfk.flac", JFK.read_bytes())},
            data={"callback_url": "http://127.0.0.1/x"},
        )
        assert r.status_code == 400 and "no WEBHOOK_ALLOWED_HOSTS" in r.json()["detail"]


def test_the_end_of_a_job_is_posted_signed_to_its_callback(tmp_path: Path) -> None:
    with Receiver() as receiver, app_with_fast_sweep(hooked(tmp_path)) as c:
        job_id = submit_with_callback(c, f"{receiver.url}/hooks/whisper?token=abc")
        body = wait_webhook(c, job_id, "delivered")
        (delivery,) = receiver.wait_for(1)
    assert delivery.path == "/hooks/whisper?token=abc"
    header = delivery.headers["x-whisper-signature"]
    assert verify(SECRET, delivery.body, header)
    # As docs/api.md tells receivers to check it, written out here once more.
    t, v1 = (part.split("=", 1)[1] for part in header.split(","))
    signed = f"{t}.".encode() + delivery.body
    assert v1 == hmac.new(SECRET.encode(), signed, hashlib.sha256).hexdigest()
    assert abs(time.time() - int(t)) < 60
    sent = delivery.json
    assert sent["job_id"] == job_id and sent["status"] == "done"
    assert sent["text"] == body["text"] == "audio part 0"
    assert "webhook" not in sent
    assert delivery.headers["x-whisper-job-id"] == job_id
    assert body["webhook"]["attempts"] == 1 and body["webhook"]["delivered_at"]
    assert KEY not in delivery.body.decode() and KEY not in str(delivery.headers)


def test_a_failing_receiver_is_retried_with_backoff_then_marked_failed(tmp_path: Path) -> None:
    with Receiver(statuses=(500, 503, 200)) as receiver, app_with_fast_sweep(hooked(tmp_path)) as c:
        job_id = submit_with_callback(c, receiver.url)
        body = wait_webhook(c, job_id, "delivered")
        assert body["webhook"]["attempts"] == 3
        tries = receiver.wait_for(3)
        assert [d.headers["x-whisper-delivery-attempt"] for d in tries] == ["1", "2", "3"]

    settings = hooked(tmp_path / "fail", webhook_max_attempts=2)
    with Receiver(statuses=(500,)) as receiver, app_with_fast_sweep(settings) as c:
        job_id = submit_with_callback(c, receiver.url)
        body = wait_webhook(c, job_id, "failed")
        assert body["webhook"]["attempts"] == 2
        assert body["webhook"]["last_error"] == "HTTP 500"
        assert len(receiver.deliveries) == 2
        # A redirect is not followed: it counts as a failed try.
    with (
        Receiver(statuses=(302,)) as receiver,
        app_with_fast_sweep(hooked(tmp_path / "redirect", webhook_max_attempts=1)) as c,
    ):
        body = wait_webhook(c, submit_with_callback(c, receiver.url), "failed")
        assert "redirects are not followed" in body["webhook"]["last_error"]


def test_a_pending_delivery_survives_a_restart(tmp_path: Path) -> None:
    """The row holds the delivery: a gateway that starts later delivers it."""
    # The retry is due 2 s after the first try; a try cut off by the shutdown
    # (a busy machine) is taken again when its claim runs out (timeout + 10 s).
    settings = hooked(tmp_path, webhook_retry_base_s=2, webhook_timeout_s=1)
    with Receiver(statuses=(500, 200)) as receiver:
        with app_with_fast_sweep(settings) as c:
            job_id = submit_with_callback(c, receiver.url)
            body = wait_webhook(c, job_id, "pending")
            deadline = time.monotonic() + 10
            while body["webhook"].get("last_error") != "HTTP 500" and time.monotonic() < deadline:
                body = c.get(f"/transcribe/{job_id}", headers=AUTH).json()
            assert body["webhook"]["last_error"] == "HTTP 500", body
        # The first gateway is gone, most likely before the retry was due.
        with app_with_fast_sweep(settings) as c:
            body = wait_webhook(c, job_id, "delivered", timeout=30)
            assert body["webhook"]["attempts"] >= 2
    assert receiver.deliveries[-1].json["job_id"] == job_id


@pytest.mark.parametrize("inside", ["\t", "\r\n", " ", "\x00"])
def test_a_callback_url_with_a_space_or_control_character_is_refused(
    tmp_path: Path, inside: str
) -> None:
    """(Before, it was accepted; every delivery then raised InvalidURL, uncaught.)"""
    with app_with_fast_sweep(hooked(tmp_path)) as c:
        r = c.post(
            "/transcribe",
            headers=AUTH,
            files={"file": ("jfk.flac", JFK.read_bytes())},
            data={"callback_url": f"http://127.0.0.1/hook{inside}X-Injected: 1"},
        )
        assert r.status_code == 400 and "control characters" in r.json()["detail"]
        assert c.get("/transcribe", headers=AUTH).json()["jobs"] == []
    assert uploads(tmp_path) == []


def test_a_url_the_http_client_refuses_is_a_failed_try_not_an_exception() -> None:
    async def one() -> str | None:
        async with httpx.AsyncClient() as client:
            return await post(client, "http://127.0.0.1/a\r\nb", b"{}", job_id="j", attempt=1,
                              secret=SECRET)  # fmt: skip

    assert asyncio.run(one()) == "InvalidURL"
