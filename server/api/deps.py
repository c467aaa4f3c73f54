"""Shared request dependencies and helpers of the routers."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

from fastapi import Depends, Request, UploadFile
from fastapi.responses import FileResponse
from sqlalchemy.orm import Session

from server.context import AppContext
from server.errors import BadInput, NotFound, PayloadTooLarge


def get_context(request: Request) -> AppContext:
    return request.app.state.context


Ctx = Annotated[AppContext, Depends(get_context)]


_LARGEST_ID = 2**63 - 1  # the database's integer columns are 64-bit
_WHOLE_NUMBER = re.compile(r"[+-]?[0-9]+")


def ids_in_range(request: Request) -> None:
    """Whole numbers in the path or query beyond 64 bits name nothing the database can hold:
    404 / 400 here instead of an overflow inside the database driver."""
    for where, values in (("path", request.path_params), ("query", request.query_params)):
        for name, value in values.items():
            text = str(value).strip()
            if _WHOLE_NUMBER.fullmatch(text) and abs(int(text)) > _LARGEST_ID:
                if where == "path":
                    raise NotFound(f"{name} {text} not found")
                raise BadInput(f"query parameter {name} is out of range")


def save_upload(ctx: AppContext, upload: UploadFile) -> Path:
    """Copy an uploaded file to the data store's temporary folder, enforcing the size limit."""
    if not upload.filename:
        raise BadInput("the upload has no file name (needed to tell its format)")
    limit = ctx.settings.max_upload_bytes
    target = ctx.datastore.new_temp_path(".upload")
    written = 0
    try:
        with target.open("wb") as out:
            while chunk := upload.file.read(1 << 20):
                written += len(chunk)
                if written > limit:
                    raise PayloadTooLarge(
                        f"the upload is larger than the limit of {ctx.settings.max_upload_mb:g} MB"
                    )
                out.write(chunk)
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    return target


def end_transaction(db: Session) -> None:
    """End the request's read transaction before slow I/O (an upload copy, a file download):
    on SQLite every transaction holds the write lock (BEGIN IMMEDIATE)."""
    db.commit()


def nifti_response(path: Path, filename: str) -> FileResponse:
    if not path.is_file():
        raise NotFound(f"file {filename} is missing from the data store")
    return FileResponse(path, media_type="application/gzip", filename=filename)
