"""Training jobs: state and progress."""

from __future__ import annotations

from fastapi import APIRouter, Query

from server import schemas
from server.auth import CurrentUser, Db
from server.services import projects, training

router = APIRouter(tags=["jobs"])


@router.get("/projects/{project_id}/jobs", response_model=list[schemas.JobOut])
def list_jobs(
    project_id: int, db: Db, _user: CurrentUser, limit: int = Query(1000, ge=1, le=100_000)
) -> list[schemas.JobOut]:
    projects.get_project(db, project_id)
    return [schemas.JobOut.model_validate(j) for j in training.list_jobs(db, project_id, limit)]


@router.get("/jobs/{job_id}", response_model=schemas.JobOut)
def get_job(job_id: int, db: Db, _user: CurrentUser) -> schemas.JobOut:
    return schemas.JobOut.model_validate(training.get_job(db, job_id))
