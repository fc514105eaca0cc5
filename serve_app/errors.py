"""The error a request gets for what it sent (one type for every module that judges input),
and the one way pydantic's validation errors are put into words."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


class UploadError(Exception):
    """A request the server refuses (the file, a form field, an option, a callback URL);
    ``status`` is the HTTP code to answer. main.py renders it as JSON (OpenAI's shape on /v1)."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        """The form field at fault, where one is."""


def describe(errors: Iterable[Mapping[str, Any]], default: str, *, upper: bool = False) -> str:
    """pydantic's errors as ``field: what is wrong; ...`` (``upper``: environment names)."""

    def field(err: Mapping[str, Any]) -> str:
        name = ".".join(str(p) for p in err["loc"])
        return (name.upper() if upper else name) or default

    return "; ".join(
        f"{field(err)}: {str(err['msg']).removeprefix('Value error, ')}" for err in errors
    )
