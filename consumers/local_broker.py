"""The local Apache Kafka broker of deploy/kafka (a standalone script, not a package), loaded as a module for
the commands and tests that start one: ``demo``, ``bench --kafka``, the integration fixtures."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def load_local_kafka():
    """deploy/kafka/local_kafka.py as a module (``LocalKafka``, ``LocalCluster``, ``fetch``)."""
    name = "audiostream_local_kafka"
    if name in sys.modules:
        return sys.modules[name]
    path = REPO / "deploy" / "kafka" / "local_kafka.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
