"""joblot: submit a job of N items, run it on your own workers, poll its JobStatus."""

from joblot.app import App, Context, ItemFailed, JobAborted
from joblot.client import AsyncClient, Client
from joblot.errors import ClientError
from joblot.models import JobReport, JobStats, JobStatus, Status
from joblot.webhooks import WebhookVerificationError, verify_webhook

__version__ = "0.1.0"

__all__ = [
    "App",
    "AsyncClient",
    "Client",
    "ClientError",
    "Context",
    "ItemFailed",
    "JobAborted",
    "JobReport",
    "JobStats",
    "JobStatus",
    "Status",
    "WebhookVerificationError",
    "__version__",
    "verify_webhook",
]
