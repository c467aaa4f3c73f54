"""The admin dashboard: its page (``GET /admin``, scripts under ``/admin/static``) and its data
(``GET /api/v1/projects/{id}/dashboard``, admin role: one request per refresh).

The page and everything it loads are files in ``server/static`` (ECharts vendored in
``server/static/vendor``), served by this server; its Content-Security-Policy lets the
browser load and contact nothing but this server.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from server import schemas
from server.api.deps import Ctx
from server.auth import AdminUser, Db
from server.services import dashboard, projects

STATIC_DIR = Path(__file__).resolve().parents[1] / "static"
PAGE = STATIC_DIR / "admin.html"
STATIC_PATH = "/admin/static"
# 'self' only: no script, style, font, image or request may go to any other host.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)

router = APIRouter(tags=["dashboard"])
page_router = APIRouter(tags=["dashboard"], include_in_schema=False)


@router.get("/projects/{project_id}/dashboard", response_model=schemas.Dashboard,
            summary="Everything the admin dashboard shows of a project, in one response (admin)")
def project_dashboard(project_id: int, ctx: Ctx, db: Db, _user: AdminUser) -> schemas.Dashboard:
    return dashboard.project_dashboard(ctx, db, projects.get_project(db, project_id))


@page_router.get("/admin")
def admin_page() -> FileResponse:
    """The page itself needs no token: it asks for one and sends it with every data request."""
    return FileResponse(PAGE, media_type="text/html", headers={
        "Content-Security-Policy": CONTENT_SECURITY_POLICY,
        "Cache-Control": "no-cache",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    })


def add_dashboard_page(app: FastAPI) -> None:
    """``GET /admin`` and its static files."""
    app.include_router(page_router)
    app.mount(STATIC_PATH, StaticFiles(directory=STATIC_DIR), name="admin-static")
