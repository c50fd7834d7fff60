"""What both BentoML services share at start-up.

Kept apart from `supportflow.release.stack`, which starts the services: a served process imports this module,
and nothing here may pull in the release, bundling or training code.
"""

import gc

from supportflow.settings import Settings

GC_THRESHOLDS = (700, 10, 1000)  # CPython's defaults are (700, 10, 10): full passes 100 times rarer


def freeze_startup_objects() -> None:
    """Call at the end of a service's start-up. Measured with py-spy on the served classifier: full garbage
    collections scanned the millions of objects that importing transformers, torch and MLflow leaves, pausing
    a request for 0.5-0.9 s every few seconds. Frozen objects are never scanned again, and the collector runs
    its full passes a hundred times less often (young collections are unchanged)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def bentoml_service_config(settings: Settings) -> dict:
    """BentoML's per-request access log and spans, as the settings say (both off by default)."""
    return {
        "logging": {"access": {"enabled": settings.access_log}},
        "tracing": {} if settings.trace_requests else {"excluded_urls": [".*"]},  # patterns searched in each URL
    }
