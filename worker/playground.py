"""The playground: a page at `/` to try the worker on, and the read-only routes it needs.

The page (`worker/static/`: one HTML file, one stylesheet, one script; no build step, nothing
from another site) runs jobs through the same routes a client uses: `/v2/<id>/run` and
`/stream` + `/status` on the local queue endpoint, `POST /tryon` on the load-balancing one. What
it learns here is only what a form needs: which endpoint form it is on, whether an API key is
required, the fields' defaults, choices and ranges (taken from the schema, so the page never
restates them), and the house model photos, listed and served as thumbnails.

The page and its files are public (they hold nothing but the form); the house model routes
require `LOCAL_API_KEY` when one is set, like every job route. Nothing here writes anything.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image, ImageOps

from core.vocabulary import AUTO, CATEGORIES, GARMENT_PHOTO_TYPES, OUTFIT_ORDERS
from worker.config import Settings
from worker.httpapi import ApiError, key_check
from worker.runtime import house_model_photos
from worker.schema import (
    FIELDS,
    FITS,
    GARMENT_ITEM_FIELDS,
    GUIDANCE_RANGE,
    MAX_SEED,
    OUTPUT_FORMATS,
    RESOLUTIONS,
    SAMPLES_RANGE,
    STEPS_RANGE,
)

STATIC_DIR = Path(__file__).resolve().parent / "static"
# The page's own files only; pictures it shows come from the worker (data:, blob:) or from the
# result URLs of the caller's bucket, which may be on any host.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src * data: blob:; connect-src 'self'; script-src 'self'; "
        "style-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
THUMBNAIL_SIZE = (240, 320)


def field_options(settings: Settings) -> dict[str, Any]:
    """The form's defaults, choices and ranges (and the fields of an outfit's item), from the
    schema and this worker's settings.

    Fields the schema does not know yet keep the choices and defaults written in the page.
    """
    return {
        "defaults": {name: value for name, value in FIELDS.items() if value is not None},
        "choices": {
            "model_type": [*settings.model_types, AUTO],
            "category": [*CATEGORIES, AUTO],
            "resolution": [*RESOLUTIONS, *settings.extra_resolutions],
            "output_format": list(OUTPUT_FORMATS),
            "fit": list(FITS),
            "garment_photo_type": list(GARMENT_PHOTO_TYPES),
            "order": list(OUTFIT_ORDERS),
        },
        "garment_item": list(GARMENT_ITEM_FIELDS),
        "ranges": {
            "steps": list(STEPS_RANGE),
            "samples": list(SAMPLES_RANGE),
            "guidance_scale": list(GUIDANCE_RANGE),
            "seed": [0, MAX_SEED],
        },
    }


def install_playground(
    app: FastAPI,
    *,
    mode: str,
    routes: Mapping[str, str],
    settings: Settings,
    api_key: str | None,
) -> None:
    """Add `/`, `/static/...`, `/playground/config` and the house model routes to `app`.

    `mode` is "queue" or "lb"; `routes` are the job routes the page calls in that mode.
    """
    config = {
        "mode": mode,
        "routes": dict(routes),
        "key_required": api_key is not None,
        "house_models": "/house-models",
        "fields": field_options(settings),
    }
    folder = settings.model_images_dir
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=PAGE_HEADERS)

    @app.get("/playground/config", include_in_schema=False)
    def playground_config() -> dict:
        return config

    models = APIRouter(prefix="/house-models", dependencies=[Depends(key_check(api_key))])

    @models.get("")
    def list_house_models() -> dict:
        """The house model photos `person_index` counts, in its order, with their sizes."""
        entries = []
        for index, path in enumerate(house_model_photos(folder)):
            width, height = _oriented_size(str(path), path.stat().st_mtime_ns)
            entries.append({
                "index": index,
                "name": path.stem,
                "width": width,
                "height": height,
                "thumbnail": f"/house-models/{index}/thumbnail",
                "image": f"/house-models/{index}/image",
            })  # fmt: skip
        return {"models": entries}

    @models.get("/{index}/thumbnail")
    def thumbnail(index: int) -> Response:
        path = _photo(folder, index)
        data = _thumbnail(str(path), path.stat().st_mtime_ns)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=300"})

    @models.get("/{index}/image")
    def image(index: int) -> Response:
        path = _photo(folder, index)
        # The type from the file's suffix (Starlette asks `mimetypes`), one of runtime.PHOTO_SUFFIXES.
        return FileResponse(path, headers={"Cache-Control": "private, max-age=300"})

    app.include_router(models)


def _photo(folder: Path, index: int) -> Path:
    photos = house_model_photos(folder)
    if not 0 <= index < len(photos):
        count = len(photos)
        raise ApiError(404, f"no house model {index}: there are {count} (person_index 0 to {count - 1})")
    return photos[index]


@lru_cache(maxsize=256)
def _oriented_size(path: str, mtime_ns: int) -> tuple[int, int]:
    """(width, height) as shown, after EXIF orientation, from the header alone (cached per file version)."""
    with Image.open(path) as photo:
        width, height = photo.size
        if photo.getexif().get(ImageOps.ExifTags.Base.Orientation, 1) in (5, 6, 7, 8):
            width, height = height, width
    return width, height


@lru_cache(maxsize=64)
def _thumbnail(path: str, mtime_ns: int) -> bytes:
    """A small JPEG of the photo, upright (cached per file version)."""
    with Image.open(path) as photo:
        picture = ImageOps.exif_transpose(photo).convert("RGB")
    picture.thumbnail(THUMBNAIL_SIZE, Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()
