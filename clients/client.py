"""A typed Python client for every endpoint of the scribbleflow REST API (httpx).

Responses come back as the server's own pydantic models (``server.schemas``), so the
client and the server share one definition of the API. Errors raise ``ApiError`` with
the HTTP status and the server's message.

    with ScribbleflowClient("http://127.0.0.1:8000", token) as client:
        project = client.create_project("heart", ["RV", "Myo", "LV"])
        image = client.upload_image(project.id, "case01.nii.gz")
        session = client.open_session(image.id)
        round_ = client.submit_labelmap(session.id, "scribbles.nii.gz")
        client.download_round_file(round_.id, "segmentation", "segmentation.nii.gz")
        client.accept(session.id)
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

import httpx

from server import schemas

API = schemas.API_PREFIX
#: progress(bytes_sent) after each chunk of an upload
UploadProgress = Callable[[int], None]


class ApiError(RuntimeError):
    """A non-2xx answer: ``status`` and the server's ``detail`` message."""

    def __init__(self, status: int, detail: str, method: str = "", url: str = ""):
        super().__init__(f"{status} {method} {url}: {detail}")
        self.status = status
        self.detail = detail


class _ProgressReader(io.RawIOBase):
    """A file wrapper that reports how many bytes were read (for upload progress bars)."""

    def __init__(self, handle: IO[bytes], progress: UploadProgress | None):
        self._handle = handle
        self._progress = progress

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        chunk = self._handle.read(size)
        if chunk and self._progress is not None:
            self._progress(len(chunk))
        return chunk

    def readinto(self, buffer) -> int:
        chunk = self.read(len(buffer))
        buffer[: len(chunk)] = chunk
        return len(chunk)


class ScribbleflowClient:
    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        token: str | None = None,
        *,
        timeout: float = 600.0,
        http: httpx.Client | None = None,
    ):
        """``http``: an existing httpx.Client (e.g. FastAPI's TestClient) to send requests with."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._owns_http = http is None
        self._http = http or httpx.Client(base_url=base_url, timeout=timeout)
        self._headers = headers

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> ScribbleflowClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- plumbing -----------------------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs) -> httpx.Response:
        response = self._http.request(method, path, headers=self._headers, **kwargs)
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise ApiError(response.status_code, str(detail), method, path)
        return response

    def _json(self, method: str, path: str, **kwargs) -> Any:
        return self._request(method, path, **kwargs).json()

    def _download(self, path: str, destination: str | os.PathLike) -> Path:
        target = Path(destination)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.part")
        with self._http.stream("GET", path, headers=self._headers) as response:
            if response.status_code >= 400:
                response.read()
                try:
                    detail = response.json().get("detail", response.text)
                except ValueError:
                    detail = response.text
                raise ApiError(response.status_code, str(detail), "GET", path)
            with tmp.open("wb") as out:
                for chunk in response.iter_bytes(1 << 20):
                    out.write(chunk)
        os.replace(tmp, target)
        return target

    def _upload(
        self, path: str, file_path: str | os.PathLike, progress: UploadProgress | None, data: dict | None = None
    ) -> Any:
        file_path = Path(file_path)
        with file_path.open("rb") as handle:
            reader = _ProgressReader(handle, progress)
            files = {"file": (file_path.name, reader, "application/octet-stream")}
            return self._json("POST", path, files=files, data=data or {})

    # --- health and metrics -------------------------------------------------------------------

    def health(self) -> schemas.Health:
        return schemas.Health.model_validate(self._json("GET", "/health"))

    def metrics(self) -> str:
        return self._request("GET", "/metrics").text

    # --- projects -----------------------------------------------------------------------------

    def create_project(
        self, name: str, labels: list[str], *, description: str = "", learning: dict | None = None
    ) -> schemas.ProjectOut:
        body = schemas.ProjectCreate(name=name, labels=labels, description=description, learning=learning)
        return schemas.ProjectOut.model_validate(
            self._json("POST", f"{API}/projects", json=body.model_dump(mode="json", exclude_none=True))
        )

    def list_projects(self) -> list[schemas.ProjectOut]:
        return [schemas.ProjectOut.model_validate(p) for p in self._json("GET", f"{API}/projects")]

    def get_project(self, project_id: int) -> schemas.ProjectOut:
        return schemas.ProjectOut.model_validate(self._json("GET", f"{API}/projects/{project_id}"))

    def update_learning(self, project_id: int, **changes) -> schemas.ProjectOut:
        body = schemas.LearningSettingsUpdate(**changes).model_dump(mode="json", exclude_none=True)
        return schemas.ProjectOut.model_validate(
            self._json("PATCH", f"{API}/projects/{project_id}/learning", json=body)
        )

    def next_image(self, project_id: int, order: str = "stream") -> schemas.StreamNext:
        return schemas.StreamNext.model_validate(
            self._json("GET", f"{API}/projects/{project_id}/stream/next", params={"order": order})
        )

    def project_audit(self, project_id: int, limit: int = 1000) -> list[schemas.AuditOut]:
        events = self._json("GET", f"{API}/projects/{project_id}/audit", params={"limit": limit})
        return [schemas.AuditOut.model_validate(e) for e in events]

    def learning_curve(self, project_id: int) -> schemas.LearningCurve:
        return schemas.LearningCurve.model_validate(self._json("GET", f"{API}/projects/{project_id}/learning-curve"))

    # --- images -------------------------------------------------------------------------------

    def upload_image(
        self, project_id: int, path: str | os.PathLike, *, name: str | None = None,
        progress: UploadProgress | None = None,
    ) -> schemas.ImageOut:
        data = {"name": name} if name else None
        return schemas.ImageOut.model_validate(
            self._upload(f"{API}/projects/{project_id}/images", path, progress, data)
        )

    def list_images(self, project_id: int) -> list[schemas.ImageOut]:
        return [schemas.ImageOut.model_validate(i) for i in self._json("GET", f"{API}/projects/{project_id}/images")]

    def get_image(self, image_id: int) -> schemas.ImageOut:
        return schemas.ImageOut.model_validate(self._json("GET", f"{API}/images/{image_id}"))

    def set_validation(self, image_id: int, is_validation: bool) -> schemas.ImageOut:
        return schemas.ImageOut.model_validate(
            self._json("PATCH", f"{API}/images/{image_id}", json={"is_validation": is_validation})
        )

    def download_image(self, image_id: int, destination: str | os.PathLike) -> Path:
        return self._download(f"{API}/images/{image_id}/volume", destination)

    def download_label(self, image_id: int, destination: str | os.PathLike) -> Path:
        return self._download(f"{API}/images/{image_id}/label", destination)

    def delete_image(self, image_id: int) -> None:
        self._request("DELETE", f"{API}/images/{image_id}")

    def image_rounds(self, image_id: int) -> list[schemas.RoundOut]:
        return [schemas.RoundOut.model_validate(r) for r in self._json("GET", f"{API}/images/{image_id}/rounds")]

    def image_audit(self, image_id: int, limit: int = 1000) -> list[schemas.AuditOut]:
        events = self._json("GET", f"{API}/images/{image_id}/audit", params={"limit": limit})
        return [schemas.AuditOut.model_validate(e) for e in events]

    # --- sessions and rounds ------------------------------------------------------------------

    def open_session(self, image_id: int, *, takeover: bool = False) -> schemas.SessionOut:
        return schemas.SessionOut.model_validate(
            self._json("POST", f"{API}/images/{image_id}/sessions", json={"takeover": takeover})
        )

    def get_session(self, session_id: int) -> schemas.SessionOut:
        return schemas.SessionOut.model_validate(self._json("GET", f"{API}/sessions/{session_id}"))

    def add_round(
        self,
        session_id: int,
        scribbles: Iterable[schemas.Stroke | dict] = (),
        clicks: Iterable[schemas.Click | dict] = (),
    ) -> schemas.RoundOut:
        body = schemas.RoundCreate(scribbles=list(scribbles), clicks=list(clicks))
        return schemas.RoundOut.model_validate(
            self._json("POST", f"{API}/sessions/{session_id}/rounds", json=body.model_dump(mode="json"))
        )

    def submit_labelmap(
        self, session_id: int, path: str | os.PathLike, progress: UploadProgress | None = None
    ) -> schemas.RoundOut:
        """A scribble labelmap file of the image's size: labels 0..C-1, 255 where unlabelled."""
        return schemas.RoundOut.model_validate(
            self._upload(f"{API}/sessions/{session_id}/rounds/labelmap", path, progress)
        )

    def undo(self, session_id: int) -> schemas.SessionOut:
        return schemas.SessionOut.model_validate(self._json("POST", f"{API}/sessions/{session_id}/undo"))

    def accept(self, session_id: int) -> schemas.AcceptOut:
        return schemas.AcceptOut.model_validate(self._json("POST", f"{API}/sessions/{session_id}/accept"))

    def close_session(self, session_id: int) -> schemas.SessionOut:
        return schemas.SessionOut.model_validate(self._json("POST", f"{API}/sessions/{session_id}/close"))

    def get_round(self, round_id: int) -> schemas.RoundOut:
        return schemas.RoundOut.model_validate(self._json("GET", f"{API}/rounds/{round_id}"))

    def download_round_file(self, round_id: int, name: str, destination: str | os.PathLike) -> Path:
        """name: segmentation, residual, scribble, input, proxy or confidence."""
        return self._download(f"{API}/rounds/{round_id}/{name}", destination)

    def download_session_file(self, session_id: int, name: str, destination: str | os.PathLike) -> Path:
        """name: prediction or uncertainty (at the session's opening), or alternative (the
        opening not shown, when the server computed both the model's and the atlas's)."""
        return self._download(f"{API}/sessions/{session_id}/{name}", destination)

    # --- models and jobs ----------------------------------------------------------------------

    def list_models(self, project_id: int) -> schemas.ModelsOut:
        return schemas.ModelsOut.model_validate(self._json("GET", f"{API}/projects/{project_id}/models"))

    def serving_model(self, project_id: int) -> schemas.ModelVersionOut:
        return schemas.ModelVersionOut.model_validate(
            self._json("GET", f"{API}/projects/{project_id}/models/serving")
        )

    def get_model(self, project_id: int, version: int) -> schemas.ModelVersionOut:
        return schemas.ModelVersionOut.model_validate(
            self._json("GET", f"{API}/projects/{project_id}/models/{version}")
        )

    def download_checkpoint(self, project_id: int, version: int, destination: str | os.PathLike) -> Path:
        """A model version's checkpoint file (admin), loadable with ``learner.checkpoints``."""
        return self._download(f"{API}/projects/{project_id}/models/{version}/checkpoint", destination)

    def import_checkpoint(self, project_id: int, path: str | os.PathLike) -> schemas.ModelVersionOut:
        return schemas.ModelVersionOut.model_validate(
            self._upload(f"{API}/projects/{project_id}/models/import", path, None)
        )

    def list_jobs(self, project_id: int) -> list[schemas.JobOut]:
        return [schemas.JobOut.model_validate(j) for j in self._json("GET", f"{API}/projects/{project_id}/jobs")]

    def get_job(self, job_id: int) -> schemas.JobOut:
        return schemas.JobOut.model_validate(self._json("GET", f"{API}/jobs/{job_id}"))

    def wait_for_jobs(
        self, project_id: int, timeout: float = 600.0, poll: float = 1.0
    ) -> list[schemas.JobOut]:
        """Poll until no job of the project is queued or running (TimeoutError after ``timeout``)."""
        deadline = time.monotonic() + timeout
        while True:
            jobs = self.list_jobs(project_id)
            if all(j.state not in ("queued", "running") for j in jobs):
                return jobs
            if time.monotonic() > deadline:
                raise TimeoutError(f"training jobs of project {project_id} still running after {timeout:g} s")
            time.sleep(poll)

    # --- administration -----------------------------------------------------------------------

    def create_token(self, role: str, owner: str) -> schemas.TokenCreated:
        body = schemas.TokenCreate(role=role, owner=owner).model_dump()
        return schemas.TokenCreated.model_validate(self._json("POST", f"{API}/admin/tokens", json=body))

    def list_tokens(self) -> list[schemas.TokenOut]:
        return [schemas.TokenOut.model_validate(t) for t in self._json("GET", f"{API}/admin/tokens")]

    def revoke_token(self, token_id: str) -> schemas.TokenOut:
        return schemas.TokenOut.model_validate(self._json("DELETE", f"{API}/admin/tokens/{token_id}"))

    def audit(
        self, *, project_id: int | None = None, image_id: int | None = None, limit: int = 1000
    ) -> list[schemas.AuditOut]:
        params = {k: v for k, v in (("project_id", project_id), ("image_id", image_id)) if v is not None}
        params["limit"] = limit
        return [schemas.AuditOut.model_validate(e) for e in self._json("GET", f"{API}/admin/audit", params=params)]
