"""No transcript text, token or secret in any log line: the app's, Ray's, or serve run's."""

from __future__ import annotations

import httpx
import pytest

from serve_app.webhooks import verify
from tests.audio_util import DATA, words
from tests.receiver import Receiver
from tests.serve.conftest import KEY, WEBHOOK_SECRET, Server, wait_done

pytestmark = pytest.mark.serve

# espeak-ng: "purple giraffes dance quietly tonight" (see tests/data/README.md)
SENTINEL = DATA / "sentinel.wav"


def test_transcripts_and_tokens_never_reach_a_log(server: Server, client: httpx.Client) -> None:
    hook_token = "hook-token-3e8d51"
    with Receiver() as receiver:
        r = client.post(
            "/transcribe",
            files={"file": ("sentinel.wav", SENTINEL.read_bytes())},
            data={"callback_url": f"{receiver.url}/hook?token={hook_token}"},
        )
        assert r.status_code == 202, r.text
        done = wait_done(client, r.json()["job_id"])
        # The job's end also went to the webhook receiver, signed.
        (delivery,) = receiver.wait_for(1)
    assert verify(WEBHOOK_SECRET, delivery.body, delivery.headers["x-whisper-signature"])
    assert delivery.json["text"] == done["text"]
    assert done["status"] == "done"
    heard = words(done["text"])
    assert "giraffe" in heard, heard
    # Probes: the text we got back, in pieces a log line could hold, the key, the
    # webhook secret and the callback URL's token.
    text_words = heard.split()
    probes = {KEY, WEBHOOK_SECRET, hook_token, "giraffe", "fellow americans"} | {
        " ".join(text_words[i : i + 3]) for i in range(max(1, len(text_words) - 2))
    }
    files = server.log_files()
    assert len(files) > 5, "no Ray logs found to check"
    leaks = []
    for path in files:
        try:
            content = path.read_text(errors="replace").lower()
        except OSError:
            continue
        leaks += [(path.name, p) for p in probes if p.lower() in content]
    assert leaks == []
