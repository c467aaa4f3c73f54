"""``POST /infer/{model}``: a session's segmentation, or a round from scribbles or clicks.

The answer is what MONAI Label sends: ``output=image`` the label volume, ``output=json`` the
JSON params, otherwise (``all`` or absent) a ``multipart/form-data`` body with a ``params``
part (JSON: ``label_names``, ``latencies``, and scribbleflow's session/round) and the label
volume as a file part.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Literal

from fastapi import APIRouter, File, Form, Query, UploadFile
from fastapi.responses import JSONResponse, Response

from server.api.deps import Ctx, end_transaction, save_upload
from server.api.monailabel.deps import ServedProject
from server.auth import CurrentUser, Db
from server.errors import BadInput
from server.services import monailabel

router = APIRouter(prefix="/infer", tags=["MONAI Label: infer"])

_RESPONSES = {
    200: {
        "description": "The label volume and/or the JSON params (see `output`).",
        "content": {
            "multipart/form-data": {"schema": {"type": "object", "properties": {
                "params": {"type": "string", "description": "JSON: label_names, latencies, scribbleflow"},
                "image": {"type": "string", "format": "binary", "description": "The label volume"},
            }}},
            "application/json": {"schema": {"type": "object"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


def _multipart(params: dict, data: bytes, filename: str) -> Response:
    boundary = secrets.token_hex(16)
    head = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"params\"\r\n"
        f"Content-Type: application/json\r\n\r\n{json.dumps(params)}\r\n"
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{filename}\"\r\n"
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    body = head + data + f"\r\n--{boundary}--\r\n".encode()
    return Response(body, media_type=f"multipart/form-data; boundary={boundary}")


@router.post("/{model}", response_class=Response, responses=_RESPONSES,
             summary="Segmentation (model `segmentation`), a scribbles round (`scribbles`) or a clicks round (`clicks`)")
def run_inference(
    model: str,
    ctx: Ctx,
    db: Db,
    project: ServedProject,
    user: CurrentUser,
    image: str = Query("", description="Image id.", examples=["case1"]),
    output: Literal["image", "json", "all"] | None = Query(None, description="What to answer (default: all)."),
    session_id: str = Query("", description="Not supported (MONAI Label sessions); leave empty."),
    params: str = Form("{}", description="JSON: label_info, selected_label_name, foreground, background, "
                                         "label, result_extension, result_dtype."),
    label: UploadFile | None = File(None, description="The scribble labelmap (model `scribbles`)."),
    file: UploadFile | None = File(None, description="Not supported: upload the image first."),
) -> Response:
    if session_id or (file is not None and not image):
        raise BadInput("inference on an uploaded file or a MONAI Label session is not supported: "
                       "upload the image (PUT /datastore/image) and name it in `image`")
    if not image:
        raise BadInput("name the image: /infer/{model}?image=ID")
    settings = monailabel.parse_params(params)
    row = monailabel.find_image(db, project, image)
    end_transaction(db)
    upload: tuple[Path, str] | None = None
    if label is not None:
        if not label.filename:
            raise BadInput("the 'label' part needs a file name (its suffix tells the format)")
        upload = (save_upload(ctx, label), label.filename)
    try:
        with ctx.threads.interactive():  # embedded training gives way, as for a REST round
            answer = monailabel.infer(ctx, db, user, project, model, row, settings, upload)
    finally:
        if upload is not None:
            upload[0].unlink(missing_ok=True)
    if output == "json":
        return JSONResponse(answer.params)
    data, filename = monailabel.encode_result(answer, settings)
    if output == "image":
        return Response(data, media_type="application/octet-stream",
                        headers={"Content-Disposition": f'attachment; filename="{filename}"'})
    return _multipart(answer.params, data, filename)
