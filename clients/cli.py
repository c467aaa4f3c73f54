"""``scribbleflow-client``: drive a scribbleflow server from the command line.

The server address and token come from ``--url``/``--token`` or the environment
variables ``SCRIBBLEFLOW_URL`` / ``SCRIBBLEFLOW_TOKEN``. Results are printed as JSON.

    scribbleflow-client projects create --name heart --labels RV,Myo,LV
    scribbleflow-client upload --project 1 /path/to/volumes/        # progress bar
    scribbleflow-client next --project 1
    scribbleflow-client open 1                                      # session on image 1
    scribbleflow-client labelmap 1 scribbles.nii.gz                 # a round
    scribbleflow-client download round 1 segmentation -o seg.nii.gz
    scribbleflow-client accept 1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

UPLOAD_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".zip")


def _print(value) -> None:
    if hasattr(value, "model_dump"):
        value = value.model_dump(mode="json")
    elif isinstance(value, list):
        value = [v.model_dump(mode="json") if hasattr(v, "model_dump") else v for v in value]
    print(json.dumps(value, indent=2, default=str))


def upload_files(paths: list[str]) -> list[Path]:
    """Files to upload: given files, and every supported file inside given directories (sorted)."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found.extend(
                p for p in sorted(path.iterdir()) if p.is_file() and p.name.lower().endswith(UPLOAD_SUFFIXES)
            )
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"no such file or directory: {path}")
    return found


def cmd_upload(client, args) -> int:
    from tqdm import tqdm

    files = upload_files(args.paths)
    if not files:
        print("nothing to upload (supported: " + ", ".join(UPLOAD_SUFFIXES) + ")", file=sys.stderr)
        return 1
    total = sum(f.stat().st_size for f in files)
    uploaded = []
    with tqdm(total=total, unit="B", unit_scale=True, desc=f"uploading {len(files)} file(s)") as bar:
        for path in files:
            bar.set_postfix_str(path.name)
            image = client.upload_image(args.project, path, progress=bar.update)
            uploaded.append({"file": str(path), "image_id": image.id, "shape_zyx": image.shape_zyx})
    _print(uploaded)
    return 0


def cmd_download(client, args) -> int:
    if args.kind == "round":
        path = client.download_round_file(args.id, args.name, args.output)
    elif args.kind == "session":
        path = client.download_session_file(args.id, args.name, args.output)
    elif args.kind == "image":
        path = client.download_image(args.id, args.output)
    else:
        path = client.download_label(args.id, args.output)
    print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scribbleflow-client", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--url", default=os.environ.get("SCRIBBLEFLOW_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--token", default=os.environ.get("SCRIBBLEFLOW_TOKEN"),
                        help="API token (default: $SCRIBBLEFLOW_TOKEN)")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("health", help="server liveness").set_defaults(
        run=lambda c, a: _print(c.health()))

    projects = sub.add_parser("projects", help="list or create projects")
    projects_sub = projects.add_subparsers(dest="projects_command", required=True)
    projects_sub.add_parser("list").set_defaults(run=lambda c, a: _print(c.list_projects()))
    create = projects_sub.add_parser("create", help="create a project (admin)")
    create.add_argument("--name", required=True)
    create.add_argument("--labels", required=True, help="comma-separated foreground label names, e.g. RV,Myo,LV")
    create.add_argument("--description", default="")
    create.set_defaults(run=lambda c, a: _print(
        c.create_project(a.name, [s.strip() for s in a.labels.split(",")], description=a.description)))

    upload = sub.add_parser("upload", help="upload volumes (files or directories) to a project")
    upload.add_argument("--project", type=int, required=True)
    upload.add_argument("paths", nargs="+")
    upload.set_defaults(run=cmd_upload)

    images = sub.add_parser("images", help="list a project's images")
    images.add_argument("--project", type=int, required=True)
    images.set_defaults(run=lambda c, a: _print(c.list_images(a.project)))

    next_ = sub.add_parser("next", help="the next image of a project's stream")
    next_.add_argument("--project", type=int, required=True)
    next_.add_argument("--order", choices=("stream", "uncertainty"), default="stream")
    next_.set_defaults(run=lambda c, a: _print(c.next_image(a.project, a.order)))

    open_ = sub.add_parser("open", help="open an annotation session on an image")
    open_.add_argument("image_id", type=int)
    open_.add_argument("--takeover", action="store_true", help="take over another annotator's lease")
    open_.set_defaults(run=lambda c, a: _print(c.open_session(a.image_id, takeover=a.takeover)))

    labelmap = sub.add_parser("labelmap", help="submit a scribble labelmap (labels 0..C-1, 255 = none) as a round")
    labelmap.add_argument("session_id", type=int)
    labelmap.add_argument("file")
    labelmap.set_defaults(run=lambda c, a: _print(c.submit_labelmap(a.session_id, a.file)))

    for name, help_text in (("undo", "undo the image's latest round"), ("accept", "accept the current segmentation"),
                            ("close", "release the session's lease")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("session_id", type=int)
        method = {"undo": "undo", "accept": "accept", "close": "close_session"}[name]
        p.set_defaults(run=lambda c, a, method=method: _print(getattr(c, method)(a.session_id)))

    download = sub.add_parser("download", help="download a result as NIfTI")
    download.add_argument("kind", choices=("round", "session", "image", "label"))
    download.add_argument("id", type=int)
    download.add_argument("name", nargs="?", default="segmentation",
                          help="round: segmentation|residual|scribble|input|proxy|confidence; "
                               "session: prediction|uncertainty|alternative")
    download.add_argument("--output", "-o", required=True)
    download.set_defaults(run=cmd_download)

    models = sub.add_parser("models", help="a project's model versions")
    models.add_argument("--project", type=int, required=True)
    models.set_defaults(run=lambda c, a: _print(c.list_models(a.project)))

    jobs = sub.add_parser("jobs", help="a project's training jobs")
    jobs.add_argument("--project", type=int, required=True)
    jobs.set_defaults(run=lambda c, a: _print(c.list_jobs(a.project)))

    imp = sub.add_parser("import-checkpoint", help="serve an offline checkpoint as the project's model (admin)")
    imp.add_argument("--project", type=int, required=True)
    imp.add_argument("file")
    imp.set_defaults(run=lambda c, a: _print(c.import_checkpoint(a.project, a.file)))

    token = sub.add_parser("token", help="create an API token through the API (admin)")
    token.add_argument("--role", choices=("annotator", "admin"), required=True)
    token.add_argument("--owner", required=True)
    token.set_defaults(run=lambda c, a: print(c.create_token(a.role, a.owner).token))
    return parser


def main(argv: list[str] | None = None) -> int:
    from clients.client import ApiError, ScribbleflowClient

    args = build_parser().parse_args(argv)
    with ScribbleflowClient(args.url, args.token) as client:
        try:
            return int(args.run(client, args) or 0)
        except ApiError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except (OSError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1


if __name__ == "__main__":
    sys.exit(main())
