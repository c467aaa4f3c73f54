"""Administration: API tokens and the audit trail (admin role only)."""

from __future__ import annotations

from fastapi import APIRouter, Query

from server import schemas
from server.auth import AdminUser, Db, create_token, list_tokens, revoke_token
from server.services import audit

router = APIRouter(prefix="/admin", tags=["admin"])


@router.post("/tokens", response_model=schemas.TokenCreated, status_code=201)
def new_token(request: schemas.TokenCreate, db: Db, user: AdminUser) -> schemas.TokenCreated:
    token, row = create_token(db, request.role, request.owner, created_by=user.owner)
    audit.record(db, user, "token_create", details={"token_id": row.id, "role": row.role, "owner": row.owner})
    db.commit()
    return schemas.TokenCreated(token=token, **schemas.TokenOut.model_validate(row).model_dump())


@router.get("/tokens", response_model=list[schemas.TokenOut])
def tokens(db: Db, _user: AdminUser) -> list[schemas.TokenOut]:
    return [schemas.TokenOut.model_validate(t) for t in list_tokens(db)]


@router.delete("/tokens/{token_id}", response_model=schemas.TokenOut)
def revoke(token_id: str, db: Db, user: AdminUser) -> schemas.TokenOut:
    row = revoke_token(db, token_id)
    audit.record(db, user, "token_revoke", details={"token_id": row.id, "owner": row.owner})
    db.commit()
    return schemas.TokenOut.model_validate(row)


@router.get("/audit", response_model=list[schemas.AuditOut], summary="Audit trail, filtered by project/image")
def audit_trail(
    db: Db,
    _user: AdminUser,
    project_id: int | None = None,
    image_id: int | None = None,
    limit: int = Query(1000, ge=1, le=100_000),
) -> list[schemas.AuditOut]:
    events = audit.list_events(db, project_id=project_id, image_id=image_id, limit=limit)
    return [schemas.AuditOut.model_validate(e) for e in events]
