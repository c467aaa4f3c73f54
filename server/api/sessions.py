"""Annotation sessions: open (with a lease), rounds, undo, accept, result downloads."""

from __future__ import annotations

from fastapi import APIRouter, File, Header, UploadFile
from fastapi.responses import FileResponse

from server import schemas
from server.api.deps import Ctx, end_transaction, nifti_response, save_upload
from server.auth import CurrentUser, Db
from server.services import history, responses, rounds, sessions
from server.services import images as image_service

# A client that retries a round (timeout, server restart) with the same key gets the same round.
IDEMPOTENCY_KEY = Header(None, alias="Idempotency-Key", min_length=1, max_length=200,
                         description="Any unique string per round (e.g. a UUID); a retry with it returns "
                                     "the round stored for it instead of making a second one.")

router = APIRouter(tags=["sessions"])


@router.post(
    "/images/{image_id}/sessions", response_model=schemas.SessionOut, status_code=201,
    summary="Open a session: the opening prediction (model or atlas), uncertainty and a suggestion; 409 if leased",
)
def open_session(
    image_id: int, ctx: Ctx, db: Db, user: CurrentUser, request: schemas.SessionOpen | None = None
) -> schemas.SessionOut:
    image = image_service.get_image(db, image_id)
    takeover = request.takeover if request else False
    with ctx.threads.interactive():
        session = sessions.open_session(ctx, db, user, image, takeover)
    return responses.session_out(db, session)


@router.get("/sessions/{session_id}", response_model=schemas.SessionOut)
def get_session(session_id: int, db: Db, _user: CurrentUser) -> schemas.SessionOut:
    return responses.session_out(db, sessions.get_session(db, session_id))


@router.post("/sessions/{session_id}/rounds", response_model=schemas.RoundOut, status_code=201,
             summary="Submit scribbles and/or clicks")
def add_round(
    session_id: int, request: schemas.RoundCreate, ctx: Ctx, db: Db, user: CurrentUser,
    idempotency_key: str | None = IDEMPOTENCY_KEY,
) -> schemas.RoundOut:
    session = sessions.get_session(db, session_id)
    with ctx.threads.interactive():
        row = rounds.add_round(ctx, db, user, session, request, idempotency_key)
    return responses.round_out(db, row)


@router.post(
    "/sessions/{session_id}/rounds/labelmap", response_model=schemas.RoundOut, status_code=201,
    summary="Submit a scribble labelmap (image's size; labels 0..C-1, 255 = unlabelled)",
)
def add_labelmap_round(
    session_id: int, ctx: Ctx, db: Db, user: CurrentUser, file: UploadFile = File(...),
    idempotency_key: str | None = IDEMPOTENCY_KEY,
) -> schemas.RoundOut:
    session = sessions.get_session(db, session_id)
    end_transaction(db)
    path = save_upload(ctx, file)
    try:
        with ctx.threads.interactive():
            row = rounds.add_labelmap_round(ctx, db, user, session, path, file.filename, idempotency_key)
    finally:
        path.unlink(missing_ok=True)
    return responses.round_out(db, row)


@router.post("/sessions/{session_id}/undo", response_model=schemas.SessionOut,
             summary="Undo the image's latest round")
def undo(session_id: int, ctx: Ctx, db: Db, user: CurrentUser) -> schemas.SessionOut:
    session = sessions.get_session(db, session_id)
    rounds.undo(ctx, db, user, session)
    return responses.session_out(db, session)


@router.post("/sessions/{session_id}/accept", response_model=schemas.AcceptOut,
             summary="Accept the current segmentation as the image's label")
def accept(session_id: int, ctx: Ctx, db: Db, user: CurrentUser) -> schemas.AcceptOut:
    session = sessions.get_session(db, session_id)
    with ctx.threads.interactive():
        session, image, job = sessions.accept(ctx, db, user, session)
    return schemas.AcceptOut(
        session=responses.session_out(db, session), image=image_service.image_out(image),
        job_id=job.id if job else None,
    )


@router.post("/sessions/{session_id}/close", response_model=schemas.SessionOut,
             summary="Release the lease without accepting")
def close(session_id: int, ctx: Ctx, db: Db, user: CurrentUser) -> schemas.SessionOut:
    session = sessions.close(ctx, db, user, sessions.get_session(db, session_id))
    return responses.session_out(db, session)


@router.get("/sessions/{session_id}/{name}", response_class=FileResponse,
            summary="Download the prediction, the uncertainty map or the alternative opening (NIfTI)")
def session_file(session_id: int, name: str, ctx: Ctx, db: Db, _user: CurrentUser) -> FileResponse:
    session = sessions.get_session(db, session_id)
    end_transaction(db)
    return nifti_response(sessions.session_file(ctx, session, name), f"session-{session_id}-{name}.nii.gz")


@router.get("/rounds/{round_id}", response_model=schemas.RoundOut)
def get_round(round_id: int, db: Db, _user: CurrentUser) -> schemas.RoundOut:
    return responses.round_out(db, history.get_round(db, round_id))


@router.get("/rounds/{round_id}/{name}", response_class=FileResponse,
            summary="Download a round's segmentation, residual, scribble, input, proxy or confidence (NIfTI)")
def round_file(round_id: int, name: str, ctx: Ctx, db: Db, _user: CurrentUser) -> FileResponse:
    row = history.get_round(db, round_id)
    end_transaction(db)
    return nifti_response(rounds.round_file(ctx, row, name), f"round-{round_id}-{name}.nii.gz")
