"""Apache Beam jobs: ``prepare`` (raw text -> corpus shards) and ``generate`` (corpus -> RTD
shards). They may import ``trainer``; ``trainer`` never imports them."""

import logging


def _not_gcp_client_noise(record: logging.LogRecord) -> bool:
    # Beam warns at import time, on the root logger, that the optional Google API client is
    # missing; we never use it, and the line would head every command's output.
    return not record.getMessage().startswith("apitools not found")


logging.getLogger().addFilter(_not_gcp_client_noise)
