"""The service suite: fluxcore's server against Redis Streams and NATS JetStream.

One client process on loopback, 100-byte payloads, each system's server started
by the harness in a fresh directory and stopped before the next one starts.
"""

from __future__ import annotations

import os
import platform
import tempfile

from bench.common import Results, make_dataset, progress
from bench.servers import terminate_raises
from bench.service_fluxcore import FluxcoreSystem
from bench.service_peers import JetStreamSystem, RedisSystem
from bench.service_workloads import ServiceSizes, ServiceSystem, run_service_system

SERVICE_SYSTEMS: tuple[type[ServiceSystem], ...] = (FluxcoreSystem, RedisSystem, JetStreamSystem)
SERVICE_COLUMNS = tuple(system.system for system in SERVICE_SYSTEMS)


def run_service(sizes: ServiceSizes, base: str | None) -> Results:
    """Every system of the service suite, one after the other."""
    base = base or tempfile.gettempdir()
    progress(f"service suite: scratch directories under {base}, {sizes}")
    results = Results()
    results.context.append(
        f"{os.cpu_count()} CPUs, {platform.platform()}; python {platform.python_version()};"
        " client and servers on the same machine, 127.0.0.1"
    )
    results.context.append(f"load average at start: {_load()}")
    data = make_dataset()
    with terminate_raises():
        for system_type in SERVICE_SYSTEMS:
            run_service_system(system_type, data, sizes, base, results)
    results.context.append(f"load average at end: {_load()}")
    return results


def _load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())
