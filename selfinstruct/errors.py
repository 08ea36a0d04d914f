"""Exceptions raised by selfinstruct.

Every error meant for a person derives from ``SelfInstructError`` and carries a message that names
the problem and the fix; the CLI prints that one line and exits non-zero::

    SelfInstructError
    ├── ConfigError            bad option values, resume with a changed generation config
    ├── SeedError              seed file missing, empty or invalid (names the line)
    ├── StoreError             output directory problems
    │   └── LockedError        another `generate` is writing the same directory
    └── ClientError            the model server said no, or could not be reached
        ├── ServerUnreachable  connection refused / DNS / no answer after retries
        ├── AuthError          401 / 403
        ├── ModelNotFound      unknown model name (lists the models the server has)
        └── BadRequest         400 / 422 and other answers that retrying cannot fix
"""

from __future__ import annotations

__all__ = [
    "error_text",
    "AuthError",
    "BadRequest",
    "ClientError",
    "ConfigError",
    "LockedError",
    "ModelNotFound",
    "SeedError",
    "SelfInstructError",
    "ServerUnreachable",
    "StoreError",
]


class SelfInstructError(Exception):
    """Base class: the message is shown to the user as it is."""


def error_text(exc: BaseException) -> str:
    """What run.json records of the error that ended a session: ours as written, others with their type."""
    return str(exc) if isinstance(exc, SelfInstructError) else f"{type(exc).__name__}: {exc}"


class ConfigError(SelfInstructError):
    """An option value is wrong, or conflicts with the run already on disk."""


class SeedError(SelfInstructError):
    """The seed task file cannot be used."""


class StoreError(SelfInstructError):
    """The output directory cannot be read or written."""


class LockedError(StoreError):
    """Another process holds the output directory."""


class ClientError(SelfInstructError):
    """The model server refused or failed a request in a way retrying does not fix."""


class ServerUnreachable(ClientError):
    """No answer from the server (connection refused, timeouts) after all retries."""


class AuthError(ClientError):
    """The server rejected the API key."""


class ModelNotFound(ClientError):
    """The server does not serve the requested model."""


class BadRequest(ClientError):
    """The server rejected the request itself (400/422)."""
