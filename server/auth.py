"""API tokens (stored salted and hashed), roles, and the FastAPI dependencies that check them.

A token reads ``sf_<id>_<secret>``: ``id`` finds the row, the secret is checked against
``sha256(salt + secret)`` in constant time. Only the hash is stored; the token is shown once.
Roles: ``annotator`` (annotate, upload, read) and ``admin`` (also delete, token management,
learning settings, audit trail).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select
from sqlalchemy.orm import Session

from server.errors import BadInput, Forbidden, NotFound, Unauthorized
from server.storage.db import utcnow
from server.storage.models import ApiToken

Role = Literal["annotator", "admin"]
ROLES: tuple[str, ...] = ("annotator", "admin")
_PREFIX = "sf"


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's id, its owner's name and role."""

    token_id: str
    owner: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def _digest(salt: str, secret: str) -> str:
    return hashlib.sha256((salt + secret).encode()).hexdigest()


def create_token(db: Session, role: str, owner: str, created_by: str | None = None) -> tuple[str, ApiToken]:
    """Store a new token (hashed) and return (the token text, its row). Commits."""
    if role not in ROLES:
        raise BadInput(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
    owner = owner.strip()
    if not owner:
        raise BadInput("a token needs an owner name")
    token_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    salt = secrets.token_hex(16)
    row = ApiToken(
        id=token_id, salt=salt, digest=_digest(salt, secret), role=role, owner=owner, created_by=created_by
    )
    db.add(row)
    db.commit()
    return f"{_PREFIX}_{token_id}_{secret}", row


def verify_token(db: Session, token: str) -> Principal:
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] != _PREFIX:
        raise Unauthorized("malformed API token")
    _, token_id, secret = parts
    row = db.get(ApiToken, token_id)
    if row is None or not hmac.compare_digest(row.digest, _digest(row.salt, secret)):
        raise Unauthorized("invalid API token")
    if row.revoked_at is not None:
        raise Unauthorized("this API token has been revoked")
    return Principal(token_id=row.id, owner=row.owner, role=row.role)


def list_tokens(db: Session) -> list[ApiToken]:
    return list(db.scalars(select(ApiToken).order_by(ApiToken.created_at)))


def revoke_token(db: Session, token_id: str) -> ApiToken:
    row = db.get(ApiToken, token_id)
    if row is None:
        raise NotFound(f"token {token_id!r} not found")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        db.commit()
    return row


# --- FastAPI dependencies ------------------------------------------------------------------

_bearer = HTTPBearer(auto_error=False, description="API token: `Authorization: Bearer TOKEN`")


def get_db(request: Request):
    """One database session per request."""
    db = request.app.state.context.session_factory()
    try:
        yield db
    finally:
        db.close()


Db = Annotated[Session, Depends(get_db)]


def current_principal(
    db: Db, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Principal:
    if credentials is None:
        raise Unauthorized("missing API token: send 'Authorization: Bearer TOKEN'")
    if credentials.scheme.lower() != "bearer":
        raise Unauthorized("unsupported authorization scheme; use 'Bearer TOKEN'")
    return verify_token(db, credentials.credentials)


def require_admin(principal: Annotated[Principal, Depends(current_principal)]) -> Principal:
    if not principal.is_admin:
        raise Forbidden(f"this needs the admin role; the token of {principal.owner!r} has role {principal.role!r}")
    return principal


CurrentUser = Annotated[Principal, Depends(current_principal)]
AdminUser = Annotated[Principal, Depends(require_admin)]
