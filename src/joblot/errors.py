"""One exception hierarchy; the HTTP layer maps each class to its status code and error name."""

from __future__ import annotations


class JoblotError(Exception):
    """Base of every error joblot raises on purpose."""

    status_code = 500
    name = "InternalError"
    retry_after: int | None = None  # seconds, sent as Retry-After

    def __init__(self, description: str) -> None:
        super().__init__(description)
        self.description = description


class BadRequest(JoblotError):
    """The request could not be read at all (e.g. malformed JSON)."""

    status_code = 400
    name = "BadRequest"


class InvalidJSON(BadRequest):
    """The body is not valid JSON."""

    name = "InvalidJSON"


class InvalidParameter(BadRequest):
    """A query parameter or header has a value that cannot be used."""

    name = "InvalidParameter"


class RecordInvalid(JoblotError):
    """The body is JSON but does not describe a valid job."""

    status_code = 422
    name = "RecordInvalid"


class UnknownJobType(RecordInvalid):
    """No handler is registered for the requested `job_type`."""

    name = "UnknownJobType"


class TooManyItems(RecordInvalid):
    """The job has more items than the server accepts in one job."""

    name = "TooManyItems"


class NoCallbackUrl(RecordInvalid):
    """The job has no `callback_url`, so there is nothing to deliver."""

    name = "NoCallbackUrl"


class NothingToRetry(RecordInvalid):
    """The job has no failed items to retry."""

    name = "NothingToRetry"


class RecordNotFound(JoblotError):
    """No such job (never existed, purged, or belongs to someone else)."""

    status_code = 404
    name = "RecordNotFound"

    @classmethod
    def for_job(cls, job_id: str) -> RecordNotFound:
        """The answer for a job id that names no job this caller may see."""
        shown = job_id if len(job_id) <= 64 else job_id[:64] + "..."
        return cls(f"no job status with id {shown!r}")


class Conflict(JoblotError):
    """The request conflicts with the current state of the job."""

    status_code = 409
    name = "Conflict"


class JobFinished(Conflict):
    """The job already finished, so it cannot be cancelled."""

    name = "JobFinished"


class JobNotFinished(Conflict):
    """The job is still queued or working, and the request needs it finished (a retry of
    its failed items, a redelivery of its webhook)."""

    name = "JobNotFinished"


class IdempotencyKeyReused(Conflict):
    """An `Idempotency-Key` was reused with a different request body."""

    name = "IdempotencyKeyReused"


class Unauthorized(JoblotError):
    """Missing, malformed, unknown or revoked credentials."""

    status_code = 401
    name = "Couldn't authenticate you"


class TooManyRequests(JoblotError):
    """A rate limit or quota was hit; `retry_after` says in how many seconds to try again."""

    status_code = 429
    name = "TooManyRequests"

    def __init__(self, description: str, retry_after: int = 1) -> None:
        super().__init__(description)
        self.retry_after: int | None = retry_after


class TooManyJobs(TooManyRequests):
    """The tenant already has as many queued or working jobs as it may."""

    name = "TooManyJobs"


class PayloadTooLarge(JoblotError):
    """The request body is larger than the server accepts."""

    status_code = 413
    name = "PayloadTooLarge"


class UnsupportedMediaType(JoblotError):
    """The request body is not declared as JSON."""

    status_code = 415
    name = "UnsupportedMediaType"


class MethodNotAllowed(JoblotError):
    """The path exists but not with this HTTP method."""

    status_code = 405
    name = "MethodNotAllowed"


class Unavailable(JoblotError):
    """The database cannot be reached right now; retry shortly."""

    status_code = 503
    name = "ServiceUnavailable"
    retry_after = 2


class NotReady(Unavailable):
    """The database answers, but its schema is not the one this version of joblot uses."""

    name = "SchemaOutOfDate"
    retry_after = 10


class SchemaOutOfDate(JoblotError):
    """The database schema is behind this version of joblot."""

    name = "SchemaOutOfDate"


class ConfigError(JoblotError):
    """A setting, flag or environment variable has an unusable value."""

    name = "ConfigError"


class ClientError(JoblotError):
    """An error answer from a joblot server, as seen by `joblot.Client`."""

    def __init__(self, status_code: int, name: str, description: str) -> None:
        super().__init__(description)
        self.status_code = status_code
        self.name = name

    def __str__(self) -> str:
        return f"{self.status_code} {self.name}: {self.description}"
