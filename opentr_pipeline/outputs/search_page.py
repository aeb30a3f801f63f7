"""The search page `opentr dev` serves beside the Dagster UI (loopback unless told otherwise):
type, see hits as you type, click one and its recording plays from that second, or open the
file's partition in the Dagster UI.

Recordings are served from under UPLOAD_URI only. A local file goes out with HTTP range requests
(Starlette's FileResponse), after its path passed every check of `confined` (no `..`, no absolute
path, no encoded slash, nothing a symbolic link leads out to); an S3 object is a redirect to a
presigned URL that expires in PRESIGN_S. The page is one HTML file (search_page.html) that asks
/api/search; a query the engine cannot read comes back as a 400 with the reason, never a trace.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import quote

from opentr_pipeline.outputs.search import Filters, QueryError, SearchEngine, open_search
from opentr_pipeline.settings import Settings

PRESIGN_S = 300  # an S3 link works for five minutes
PAGE = Path(__file__).with_name("search_page.html")
MEDIA = "/media/"
_ENCODED_SEPARATOR = re.compile(r"%(2f|5c|00)", re.IGNORECASE)


class Refused(ValueError):
    """A media path that could name something outside the upload area; the reason is logged only."""


def checked_relative(raw_path: str) -> str:
    """The path after /media/ as sent (still percent-encoded), decoded and checked part by part."""
    from urllib.parse import unquote

    if _ENCODED_SEPARATOR.search(raw_path):
        raise Refused("an encoded slash, backslash or NUL")
    relative = unquote(raw_path)
    parts = relative.split("/")
    if not relative or relative.startswith("/") or "\\" in relative or any(p in ("", ".", "..") for p in parts):
        raise Refused("not a plain relative path")
    return relative


def confined(upload_root: str, relative: str) -> Path:
    """The real file `relative` names under the local upload folder, or Refused: every symbolic
    link is followed before the answer is checked to be inside."""
    root = os.path.realpath(upload_root)
    real = os.path.realpath(os.path.join(root, relative))
    if not real.startswith(root + os.sep) or not os.path.isfile(real):
        raise Refused("not a file under the upload folder")
    return Path(real)


def hit_links(hit: dict, dagster_url: str) -> dict:
    """What the page needs beside a hit: where its recording plays from, and its partition."""
    return {**hit, "media_url": MEDIA + quote(hit["path"]),
            "dagster_url": f"{dagster_url.rstrip('/')}/assets/transcript?view=partitions&partition={quote(hit['key'])}"
            if dagster_url else ""}


def make_app(settings: Settings, dagster_url: str = "", index: SearchEngine | None = None):
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse
    from starlette.routing import Route

    index = index or open_search(settings.search_uri, settings.storage_uri, settings.dagster_home, settings.search_meaning)
    upload_uri = settings.upload_uri
    remote = "://" in upload_uri

    async def page(_request: Request) -> HTMLResponse:
        return HTMLResponse(PAGE.read_text(encoding="utf-8"), headers={"Cache-Control": "no-store"})

    def search(request: Request) -> JSONResponse:  # sync: Starlette runs it in a thread
        params = request.query_params
        query = params.get("q", "").strip()
        if not query:
            return JSONResponse({"hits": [], "files": len(index.files())})
        filters = Filters(params.get("speaker") or None, params.get("file") or None,
                          params.get("language") or None, params.get("since") or None)
        try:
            limit = min(100, max(1, int(params.get("limit", "20"))))
            hits = index.search(query, filters, limit)
        except QueryError as error:
            return JSONResponse({"error": str(error)}, status_code=400)
        except ValueError:
            return JSONResponse({"error": "limit: expected a whole number"}, status_code=400)
        return JSONResponse({"hits": [hit_links(hit.to_dict(), dagster_url) for hit in hits]})

    def status(_request: Request) -> JSONResponse:
        return JSONResponse({"files": len(index.files()), "index": index.where, "uploads": upload_uri,
                             "dagster_url": dagster_url})

    def media(request: Request):
        raw = request.scope.get("raw_path", b"").decode("latin-1").split("?", 1)[0]
        try:
            relative = checked_relative(raw[len(MEDIA):] if raw.startswith(MEDIA) else "")
            if remote:
                return RedirectResponse(presigned(upload_uri, relative), status_code=307)
            return FileResponse(confined(upload_uri, relative))
        except (Refused, FileNotFoundError):
            return PlainTextResponse("not a recording under the upload folder", status_code=404)

    return Starlette(routes=[Route("/", page), Route("/api/search", search), Route("/api/status", status),
                             Route(MEDIA + "{path:path}", media)])


def presigned(upload_uri: str, relative: str) -> str:
    """A short-lived GET link to the object `relative` names under the S3 prefix."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(upload_uri)
    key = f"{root.rstrip('/')}/{relative}"
    if not fs.isfile(key):
        raise FileNotFoundError(key)
    return fs.url(key, expires=PRESIGN_S)


def serve(settings: Settings, host: str, port: int, dagster_url: str = "") -> None:
    import uvicorn

    where = open_search(settings.search_uri, settings.storage_uri, meaning=False).where
    print(f"search page: http://{host}:{port}  (index {where})", flush=True)
    uvicorn.run(make_app(settings, dagster_url), host=host, port=port, log_level="warning")
