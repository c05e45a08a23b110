"""The public surface of the joblot package is exactly this."""

import joblot


def test_public_names_are_pinned_and_sorted() -> None:
    assert joblot.__all__ == [
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
    assert joblot.__all__ == sorted(joblot.__all__)
    for name in joblot.__all__:
        assert hasattr(joblot, name)
