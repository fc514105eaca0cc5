"""The error a request gets for what it sent: one type for every module that judges input."""

from __future__ import annotations


class UploadError(Exception):
    """A request the server refuses (the file, a form field, an option, a callback URL);
    ``status`` is the HTTP code to answer. main.py renders it as JSON (OpenAI's shape on /v1)."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        """The form field at fault, where one is."""
