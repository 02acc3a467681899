"""The one error a handler raises for a bad request (shared by tensors and handlers)."""

from __future__ import annotations


class BadInput(Exception):
    """A request body the function cannot take; ``status`` is the HTTP answer the gateway gives.

    400 for anything malformed (wrong content type, corrupt image, bad JSON, wrong shape or
    dtype) — the issue asks for 400 naming the problem, so no 415; 413 for a body or an image
    over the size limit.
    """

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
