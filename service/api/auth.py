"""Bearer-token check for control endpoints.

Control is never open by default: a service started without a token refuses every control
request (403); with a token, a request needs ``Authorization: Bearer <token>`` (401 otherwise).
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import HTTPException, Security, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

_bearer = HTTPBearer(
    auto_error=False,
    description="Control token: the service's configured API token.",
)
_Credentials = Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)]


def validate_token(token: str | None) -> bytes | None:
    """Check a configured token and return it as bytes for constant-time comparison.

    Parameters
    ----------
    token : str or None
        The configured token; ``None`` disables control.

    Returns
    -------
    bytes or None
        The UTF-8 token, or ``None``.

    Raises
    ------
    ValueError
        If the token is empty or holds whitespace or control characters (it could not be sent
        in a header, or would be a typo).
    """
    if token is None:
        return None
    if not token or not token.isprintable() or any(c.isspace() for c in token):
        raise ValueError(
            "API token must be a non-empty string without whitespace or control characters; "
            "pass token=None to run without control endpoints"
        )
    return token.encode()


def make_token_check(
    expected: bytes | None,
) -> Callable[[HTTPAuthorizationCredentials | None], Awaitable[None]]:
    """Build the FastAPI dependency that guards control endpoints.

    Parameters
    ----------
    expected : bytes or None
        Token from :func:`validate_token`; ``None`` refuses every control request.

    Returns
    -------
    callable
        An async dependency raising 403 (no token configured) or 401 (missing/wrong token).
    """

    async def require_token(credentials: _Credentials) -> None:
        if expected is None:
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                "control endpoints are disabled: the service was started without an API "
                "token (configure one to allow control)",
            )
        if credentials is None:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "missing 'Authorization: Bearer <token>' header",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if not secrets.compare_digest(credentials.credentials.encode(), expected):
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "invalid API token",
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )

    return require_token
