"""API tokens (stored salted and hashed), roles, and the FastAPI dependencies that check them.

A token reads ``sf_<id>_<secret>``: ``id`` finds the row, the secret is checked against
``sha256(salt + secret)`` in constant time. Only the hash is stored; the token is shown once.
Roles: ``annotator`` (annotate, upload, read) and ``admin`` (also delete, token management,
learning settings, audit trail).

Users with passwords (``scribbleflow user create``; argon2id hashes) log in at ``POST /auth/token``
(the MONAI Label viewers' way) and get a bearer token ``sfu_<id>_<secret>`` that carries their
role and expires (``Settings.access_token_minutes``); it is stored and checked like an API token.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Literal

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select
from sqlalchemy.orm import Session

from server.errors import BadInput, Conflict, Forbidden, NotFound, Unauthorized
from server.storage.db import utcnow
from server.storage.tables import ApiToken, User, UserToken

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
    if len(parts) == 3 and parts[0] == _USER_PREFIX:
        return _verify_user_token(db, parts[1], parts[2])
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


# --- users with passwords and the bearer tokens they log in for ------------------------------

_USER_PREFIX = "sfu"
MIN_PASSWORD_LENGTH = 8
_passwords = PasswordHasher()  # argon2id with the library's recommended parameters
# Checked when the user name is unknown, so that a wrong name costs as long as a wrong password.
_UNKNOWN_USER_HASH = _passwords.hash(secrets.token_urlsafe(16))


def create_user(db: Session, name: str, role: str, password: str, created_by: str | None = None) -> User:
    """Store a new user with an argon2id hash of ``password``. Commits."""
    if role not in ROLES:
        raise BadInput(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
    name = name.strip()
    if not name or len(name) > 200:
        raise BadInput("a user needs a name of 1 to 200 characters")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise BadInput(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")
    if db.scalar(select(User).where(User.name == name)) is not None:
        raise Conflict(f"a user named {name!r} exists already")
    user = User(name=name, role=role, password_hash=_passwords.hash(password), created_by=created_by)
    db.add(user)
    db.commit()
    return user


def list_users(db: Session) -> list[User]:
    return list(db.scalars(select(User).order_by(User.id)))


def authenticate(db: Session, name: str, password: str) -> User:
    """The active user ``name`` if ``password`` is theirs; Unauthorized (one message for both) if not."""
    user = db.scalar(select(User).where(User.name == name))
    try:
        _passwords.verify(user.password_hash if user else _UNKNOWN_USER_HASH, password)
    except (VerificationError, InvalidHashError):
        user = None
    if user is None or user.disabled_at is not None:
        raise Unauthorized("wrong user name or password")
    if _passwords.check_needs_rehash(user.password_hash):
        user.password_hash = _passwords.hash(password)
        db.commit()
    return user


def issue_user_token(db: Session, user: User, minutes: int) -> tuple[str, UserToken]:
    """A bearer token of ``user``'s role valid for ``minutes``: (the token text, its row). Commits."""
    token_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    salt = secrets.token_hex(16)
    row = UserToken(id=token_id, user_id=user.id, salt=salt, digest=_digest(salt, secret), role=user.role,
                    expires_at=utcnow() + timedelta(minutes=minutes))
    db.add(row)
    db.commit()
    return f"{_USER_PREFIX}_{token_id}_{secret}", row


def _verify_user_token(db: Session, token_id: str, secret: str) -> Principal:
    row = db.get(UserToken, token_id)
    if row is None or not hmac.compare_digest(row.digest, _digest(row.salt, secret)):
        raise Unauthorized("invalid access token")
    if row.expires_at <= utcnow():
        raise Unauthorized("this access token has expired; log in again (POST /auth/token)")
    user = db.get(User, row.user_id)
    if user is None or user.disabled_at is not None:
        raise Unauthorized("the user of this access token is disabled")
    return Principal(token_id=row.id, owner=user.name, role=row.role)


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
