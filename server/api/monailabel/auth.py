"""``/auth``: whether auth is on, password log-in for a bearer token, token check."""

from __future__ import annotations

from fastapi import APIRouter, Form

from server.api.deps import Ctx
from server.api.monailabel.schemas import AccessToken, AuthStatus, TokenUser
from server.auth import CurrentUser, Db, Principal, authenticate, issue_user_token
from server.services import audit
from server.storage.db import utcnow

router = APIRouter(prefix="/auth", tags=["MONAI Label: auth"])


@router.get("/", response_model=AuthStatus, summary="Whether auth is enabled (always)")
def auth_status() -> AuthStatus:
    return AuthStatus(enabled=True, client_id="scribbleflow")


@router.post("/token", response_model=AccessToken, summary="Log in: a bearer token of the user's role")
def access_token(
    ctx: Ctx,
    db: Db,
    username: str = Form(..., max_length=200),
    password: str = Form(..., max_length=1024),
    grant_type: str | None = Form(None, description="`password` (the only grant) or absent."),
) -> AccessToken:
    user = authenticate(db, username, password)
    token, row = issue_user_token(db, user, ctx.settings.access_token_minutes)
    audit.record(db, Principal(token_id=row.id, owner=user.name, role=user.role), "login",
                 details={"token_id": row.id, "expires_at": row.expires_at.isoformat(timespec="seconds")})
    db.commit()
    return AccessToken(access_token=token, expires_in=int((row.expires_at - utcnow()).total_seconds()),
                       expires_at=row.expires_at)


@router.get("/token/valid", response_model=TokenUser, summary="The caller, if the token is valid")
def valid_token(user: CurrentUser) -> TokenUser:
    return TokenUser(username=user.owner, name=user.owner, roles=[user.role])
