"""What storing a job's images gives back: per image a URL or inline data, plus warnings."""

from __future__ import annotations

import base64 as b64
from dataclasses import dataclass, field


@dataclass
class StoredImage:
    """One output image, either uploaded (`url`) or carried inline (`base64`)."""

    content_type: str
    url: str | None = None
    base64: str | None = None

    @classmethod
    def inline(cls, data: bytes, content_type: str) -> StoredImage:
        """The image carried in the result itself, as plain base64 (no `data:` prefix)."""
        return cls(content_type=content_type, base64=b64.b64encode(data).decode("ascii"))

    def to_dict(self) -> dict:
        """The JSON shape the worker returns: `url` or `base64`, plus `content_type`."""
        if self.url is not None:
            return {"url": self.url, "content_type": self.content_type}
        return {"base64": self.base64, "content_type": self.content_type}


@dataclass
class StorageResult:
    """The stored images in input order, and what went wrong on the way (never a secret)."""

    images: list[StoredImage]
    warnings: list[str] = field(default_factory=list)
