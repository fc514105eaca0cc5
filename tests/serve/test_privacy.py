"""No transcript text and no token in any log line: the app's, Ray's, or serve run's."""

from __future__ import annotations

import httpx
import pytest

from tests.audio_util import DATA, words
from tests.serve.conftest import KEY, Server, submit, wait_done

pytestmark = pytest.mark.serve

SENTINEL = DATA / "sentinel.wav"  # espeak-ng: "purple giraffes dance quietly tonight" (see README)


def test_transcripts_and_tokens_never_reach_a_log(server: Server, client: httpx.Client) -> None:
    done = wait_done(client, submit(client, SENTINEL.read_bytes(), "sentinel.wav"))
    assert done["status"] == "done"
    heard = words(done["text"])
    assert "giraffe" in heard, heard
    # Probes: the text we got back, in pieces a log line could hold, and the key.
    text_words = heard.split()
    probes = {KEY, "giraffe", "fellow americans"} | {
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
