"""Errors that end a job with a message meant for the caller.

The handler turns a `JobError` into RunPod's `{"error": "<sentence>"}` result instead of
letting the SDK serialise a traceback: callers get one readable sentence, and the worker
stays up for the next job. Anything that is not a `JobError` is a bug and is raised.
"""


class JobError(Exception):
    """A failure the caller can understand; `str(error)` is the whole message.

    `refresh_worker` asks RunPod to recycle this worker after the job (used after a GPU
    failure: after out-of-memory the allocators may be fragmented for good, after a CUDA
    error the context is unusable).
    """

    def __init__(self, message: str, *, refresh_worker: bool = False) -> None:
        super().__init__(message)
        self.refresh_worker = refresh_worker


class InputError(JobError):
    """The request itself is wrong: a field is missing, mistyped, out of range or unreadable."""


class OutOfMemoryJobError(JobError):
    """The GPU ran out of memory; the worker freed its cache and asks to be refreshed."""

    def __init__(self, message: str) -> None:
        super().__init__(message, refresh_worker=True)


class GpuFailureJobError(JobError):
    """A CUDA error left the GPU context unusable; the worker asks to be replaced."""

    def __init__(self, message: str) -> None:
        super().__init__(message, refresh_worker=True)


class ResultTooLargeError(JobError):
    """The result would exceed RunPod's payload limit if returned inline."""
