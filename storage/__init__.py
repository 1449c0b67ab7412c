"""Output storage: S3 (or any S3-compatible service) with presigned URLs, inline base64 otherwise."""

from storage.result import StorageResult, StoredImage
from storage.settings import RetryPolicy, S3Settings, StorageConfigError, load_settings
from storage.store import OutputFile, store_images, store_outputs

__all__ = [
    "OutputFile",
    "RetryPolicy",
    "S3Settings",
    "StorageConfigError",
    "StorageResult",
    "StoredImage",
    "load_settings",
    "store_images",
    "store_outputs",
]
