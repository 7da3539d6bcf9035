"""The pages of `artfs ui` as a Flask application over one open Registry.

Flask (with its Jinja2 templates and Werkzeug routing) because it is the most widely used,
long-maintained small WSGI framework: routes, escaping and error pages come with it, and
nothing else is needed for a read-only page. URLs follow the registry's names; what is not a
name starts with `@` (`@static`, `@runs`, `@diff`, `@raw`), which no name may contain.
"""

from __future__ import annotations

import hashlib
import json
import logging
import mimetypes
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NoReturn

from flask import Flask, Response, redirect, render_template, request
from werkzeug.exceptions import BadRequest, HTTPException, NotFound

from .. import units
from ..errors import ArtfsError, ArtifactNotFound, InvalidName, KeyNotFound
from ..names import ArtifactRef, is_name, parse_version
from ..registry import Registry, Version
from . import model
from .chart import line_chart
from .graph import DEPTH, MAX_DEPTH, lineage_graph, run_href, version_href

log = logging.getLogger(__name__)

#: Rows of a listing per page: entities, projects, artifacts, versions, a folder's files.
PAGE = 200
#: Changes of each kind a diff page shows at once.
DIFF_PAGE = 500
#: Largest file previewed, or served by `@raw`: read whole into memory and checked against
#: its digest before a byte is shown (a larger one is for `artfs get`).
PREVIEW_MAX = 32 * 1024 * 1024
#: Text shown of a previewed file.
TEXT_PREVIEW = 64 * 1024
IMAGE_TYPES = {"image/png", "image/jpeg", "image/gif", "image/webp", "image/bmp",
               "image/svg+xml"}
#: Only this server's own assets, scripts and styles: no CDN, no inline script to inject.
CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
       "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")
ARTIFACT_WORKERS = 16


def _not_found(message: str) -> NoReturn:
    raise NotFound(description=message)


def _int_arg(name: str, default: int, low: int = 0, high: int | None = None) -> int:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(description=f"{name}={raw!r} is not a number") from None
    if value < low or (high is not None and value > high):
        within = f"at least {low}" if high is None else f"from {low} to {high}"
        raise BadRequest(description=f"{name}={raw!r} must be {within}")
    return value


def human(n: int | None) -> str:
    if n is None:
        return "?"
    return units.human(n)


def when(iso: str | None) -> str:
    """An ISO time to the second, as a table shows it (the full value is its title)."""
    return iso[:19].replace("T", " ") if iso else "-"


def create_app(reg: Registry) -> Flask:
    app = Flask(__name__, static_url_path="/@static")
    app.jinja_env.filters.update(human=human, when=when, show=model.show_value,
                                 tojson_pretty=lambda v: json.dumps(v, indent=2, sort_keys=True))
    app.jinja_env.globals.update(registry_url=reg.url, version_href=version_href,
                                 run_href=run_href)
    manifests = model.Manifests(reg)

    def pool_map(fn: Callable[[str], Any], items: list[str]) -> list[Any]:
        if len(items) <= 1 or reg.workers == 1:
            return [fn(i) for i in items]
        with ThreadPoolExecutor(min(ARTIFACT_WORKERS, len(items))) as pool:
            return list(pool.map(fn, items))

    def check_entity(entity: str) -> None:
        if not is_name(entity) or entity not in reg.entities():
            _not_found(f"entity {entity!r} not found in registry {reg.url}")

    def check_project(entity: str, project: str) -> None:
        check_entity(entity)
        if not is_name(project) or project not in reg.projects(entity):
            _not_found(f"project {entity}/{project} not found in registry {reg.url}")

    def check_artifact(entity: str, project: str, name: str) -> str:
        check_project(entity, project)
        type_ = reg.artifact_type(entity, project, name) if is_name(name) else None
        if type_ is None:
            _not_found(f"artifact {entity}/{project}/{name} not found in registry {reg.url}")
        return type_

    def load_version(entity: str, project: str, name: str, label: str) -> Version:
        check_artifact(entity, project, name)
        if parse_version(label) is None and not is_name(label):
            _not_found(f"version {entity}/{project}/{name}:{label} not found")
        return reg.version(ArtifactRef(entity, project, name, label))

    def crumbs(*parts: str) -> list[tuple[str, str]]:
        """(label, link) of each level above and at a page, from the registry down."""
        out, path = [("registry", "/")], ""
        for part in parts:
            path += "/" + part
            out.append((part, path))
        return out

    @app.after_request
    def headers(response: Response) -> Response:
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    @app.get("/")
    def entities() -> str:
        offset = _int_arg("offset", 0)
        names = reg.entities()
        return render_template("names.html", title="Entities", crumbs=crumbs(), kind="entity",
                               items=[(n, f"/{n}") for n in names[offset:offset + PAGE]],
                               total=len(names), offset=offset, page=PAGE)

    @app.get("/<entity>")
    def projects(entity: str) -> str:
        check_entity(entity)
        offset = _int_arg("offset", 0)
        names = reg.projects(entity)
        return render_template("names.html", title=f"Projects of {entity}",
                               crumbs=crumbs(entity), kind="project",
                               items=[(n, f"/{entity}/{n}") for n in names[offset:offset + PAGE]],
                               total=len(names), offset=offset, page=PAGE)

    @app.get("/<entity>/<project>")
    def artifacts(entity: str, project: str) -> str:
        check_project(entity, project)
        offset = _int_arg("offset", 0)
        names = reg.artifacts(entity, project)
        shown = pool_map(lambda n: model.artifact_summary(reg, entity, project, n),
                         names[offset:offset + PAGE])
        return render_template("project.html", title=f"{entity}/{project}",
                               crumbs=crumbs(entity, project), entity=entity, project=project,
                               artifacts=shown, total=len(names), offset=offset, page=PAGE)

    @app.get("/<entity>/<project>/<name>")
    def artifact(entity: str, project: str, name: str) -> str:
        type_ = check_artifact(entity, project, name)
        offset = _int_arg("offset", 0)
        try:
            versions = model.all_versions(reg, entity, project, name)
        except ArtifactNotFound:
            versions = []
        keys, numeric = model.metadata_keys(versions)
        sort = request.args.get("sort") or "version"
        if sort not in model.FIXED_COLUMNS and sort.removeprefix("m.") not in keys:
            raise BadRequest(description=f"sort={sort!r} is not a column of {entity}/{project}/"
                             f"{name}; columns: {', '.join([*model.FIXED_COLUMNS, *keys])}")
        order = request.args.get("order") or ("desc" if sort == "version" else "asc")
        if order not in ("asc", "desc"):
            raise BadRequest(description=f"order={order!r} must be asc or desc")
        rows = model.sort_versions(versions, sort, order == "desc")
        chart = None
        chart_key = request.args.get("chart") or (numeric[0] if numeric else None)
        if chart_key is not None:
            if chart_key not in numeric:
                raise BadRequest(description=f"chart={chart_key!r} is not a numeric metadata "
                                 f"key of {entity}/{project}/{name}; numeric keys: "
                                 f"{', '.join(numeric) or 'none'}")
            chart = line_chart(chart_key, [
                (v.version, model.flatten(v.metadata)[chart_key]) for v in versions
                if model.is_number(model.flatten(v.metadata).get(chart_key))])
        base = f"/{entity}/{project}/{name}"
        return render_template(
            "artifact.html", title=f"{entity}/{project}/{name}",
            crumbs=crumbs(entity, project, name), base=base, type=type_,
            rows=rows[offset:offset + PAGE], total=len(rows), offset=offset, page=PAGE,
            keys=keys, numeric=numeric, sort=sort, order=order, chart=chart,
            versions=versions, flatten=model.flatten,
            aliases=dict(sorted(reg.aliases(entity, project, name).items())))

    @app.get("/<entity>/<project>/<name>/<label>")
    def version(entity: str, project: str, name: str, label: str) -> Any:
        v = load_version(entity, project, name, label)
        if label != v.label:
            return redirect(f"{version_href(v.qualified)}?{request.query_string.decode()}"
                            if request.query_string else version_href(v.qualified))
        folder = request.args.get("folder", "").strip("/")
        offset = _int_arg("offset", 0)
        index = manifests.get(v)
        if not index.is_folder(folder):
            _not_found(f"folder {folder!r} not found in {v.qualified}")
        rows, total = index.page(folder, offset, PAGE)
        preview = None
        chosen = request.args.get("file")
        if chosen is not None:
            entry = index.manifest.get(chosen)
            if entry is None:
                _not_found(f"file {chosen!r} not found in {v.qualified}")
            preview = _preview(reg, v, entry)
        depth = _int_arg("depth", DEPTH, 1, MAX_DEPTH)
        producer = reg.find_run(*v.logged_by.split("/")) if v.logged_by else None
        base = version_href(v.qualified)
        return render_template(
            "version.html", title=v.qualified, crumbs=crumbs(entity, project, name, v.label),
            v=v, base=base, metadata=model.flatten(v.metadata), folder=folder, rows=rows,
            total=total, offset=offset, page=PAGE, preview=preview, producer=producer,
            used_by=reg.used_by(v), graph=lineage_graph(reg, v, depth), depth=depth,
            max_depth=MAX_DEPTH,
            others=reg.versions(entity, project, name))

    @app.get("/<entity>/<project>/<name>/<label>/@raw/<path:path>")
    def raw(entity: str, project: str, name: str, label: str, path: str) -> Response:
        v = load_version(entity, project, name, label)
        entry = manifests.get(v).manifest.get(path)
        if entry is None or entry.digest is None:
            _not_found(f"file {path!r} not found in {v.qualified}"
                       if entry is None else f"{path!r} of {v.qualified} is a reference "
                       f"to {entry.ref}; its bytes are not in the registry")
        data = _checked_bytes(reg, v, entry.digest, entry.size, path)
        kind = mimetypes.guess_type(path)[0] or "application/octet-stream"
        response = Response(data, mimetype=kind)
        # What a stored file holds runs nowhere: not as a page of this site, not as a script.
        response.headers["Content-Security-Policy"] = "sandbox; default-src 'none'; " \
            "img-src 'self'; style-src 'unsafe-inline'"
        return response

    @app.get("/<entity>/<project>/<name>/@diff")
    def diff(entity: str, project: str, name: str) -> str:
        check_artifact(entity, project, name)
        numbers = reg.versions(entity, project, name)
        if not numbers:
            _not_found(f"artifact {entity}/{project}/{name} has no versions")
        a_label = request.args.get("a") or f"v{numbers[max(0, len(numbers) - 2)]}"
        b_label = request.args.get("b") or f"v{numbers[-1]}"
        a = load_version(entity, project, name, a_label)
        b = load_version(entity, project, name, b_label)
        offset = _int_arg("offset", 0)
        d = model.diff_versions(a, manifests.get(a).manifest, b, manifests.get(b).manifest)
        return render_template(
            "diff.html", title=f"{entity}/{project}/{name}: {a.label} → {b.label}",
            crumbs=crumbs(entity, project, name) + [("diff", request.full_path)], a=a, b=b,
            d=d, offset=offset, page=DIFF_PAGE, numbers=numbers,
            base=f"/{entity}/{project}/{name}")

    @app.get("/<entity>/<project>/@runs/<run_id>")
    def run(entity: str, project: str, run_id: str) -> str:
        check_project(entity, project)
        found = reg.find_run(entity, project, run_id) if is_name(run_id) else None
        if found is None:
            _not_found(f"run {entity}/{project}/{run_id} not found in registry {reg.url}")
        return render_template("run.html", title=f"run {entity}/{project}/{run_id}",
                               crumbs=crumbs(entity, project) + [(f"run {run_id}", "")],
                               run=found)

    def error_page(status: int, title: str, message: str) -> tuple[str, int]:
        return render_template("error.html", title=title, message=message, crumbs=crumbs(),
                               status=status), status

    @app.errorhandler(HTTPException)
    def http_error(e: HTTPException) -> Any:
        if e.code is None or e.code < 400:
            return e
        message = e.description or ""
        if e.code == 404 and (message.startswith("The requested URL") or not message):
            message = f"nothing at {request.path} in registry {reg.url}"
        return error_page(e.code, f"{e.code} {e.name}", message)

    @app.errorhandler(ArtifactNotFound)
    @app.errorhandler(InvalidName)
    @app.errorhandler(KeyNotFound)
    def registry_not_found(e: ArtfsError) -> tuple[str, int]:
        return error_page(404, "404 Not Found", str(e))

    @app.errorhandler(Exception)
    def failure(e: Exception) -> tuple[str, int]:
        # The traceback goes to the server's log, never to the page.
        log.exception("artfs ui: %s %s failed", request.method, request.path)
        if isinstance(e, ArtfsError):
            return error_page(500, "Error", str(e))
        return error_page(500, "Internal error",
                          f"{request.path} failed: {type(e).__name__}: {e}")

    return app


def _checked_bytes(reg: Registry, v: Version, digest: str, size: int | None,
                   path: str) -> bytes:
    """A stored file's bytes, checked against its digest (a local registry's own file is not
    checked by whoever hands it out)."""
    if size is not None and size > PREVIEW_MAX:
        raise BadRequest(description=f"{path!r} of {v.qualified} is {human(size)}, more than "
                         f"this page shows ({human(PREVIEW_MAX)}); use `artfs get`")
    data = Path(reg.blob_file(v.entity, digest, f"entry {path} of {v.qualified}")).read_bytes()
    if hashlib.sha256(data).hexdigest() != digest:
        raise ArtfsError(f"blob {digest} of {path!r} in {v.qualified} does not match its "
                         "digest: the registry's copy is damaged")
    return data


def _preview(reg: Registry, v: Version, entry: Any) -> dict[str, Any]:
    """What the version page shows of one file: its text's beginning, an image, or why not."""
    kind = mimetypes.guess_type(entry.path)[0] or ""
    out: dict[str, Any] = {"entry": entry, "kind": "none", "text": None, "truncated": False}
    if entry.digest is None:
        out["reason"] = f"a reference to {entry.ref}; its bytes are not in the registry"
        return out
    if entry.size is not None and entry.size > PREVIEW_MAX:
        out["reason"] = f"{human(entry.size)} is more than a preview reads"
        return out
    if kind in IMAGE_TYPES:
        out["kind"] = "image"
        return out
    data = _checked_bytes(reg, v, entry.digest, entry.size, entry.path)
    head = data[:TEXT_PREVIEW]
    if b"\0" in head[:8192]:
        out["reason"] = "binary content"
        return out
    out.update(kind="text", text=head.decode("utf-8", errors="replace"),
               truncated=len(data) > TEXT_PREVIEW)
    return out
