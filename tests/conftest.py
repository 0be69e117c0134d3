"""Shared fixtures: one local Ray per test session.

``ray.init`` costs seconds and every actor ~120 MB, so tests that need Ray share one
local instance (:func:`ray_local`), started on first use. A test that needs a
multi-node cluster (:func:`ray_cluster`) shuts it down and starts a loopback
``ray.cluster_utils.Cluster``; the next test that asks for ``ray_local`` starts the
local one again. Subprocess tests of the CLI start their own Ray, or join this one
through ``RAY_ADDRESS``.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import pytest

# Before anything imports Ray: no token auth and no address rewriting for the
# loopback-only test clusters, and no usage reporting (Ray 2.60 enables token auth and
# may swap 127.0.0.1 for the machine's address by default).
RAY_TEST_ENV = {
    "RAY_AUTH_MODE": "disabled",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
}
os.environ.update(RAY_TEST_ENV)
os.environ.pop("RAY_ADDRESS", None)

# Property tests draw the same examples on every run (CI must not fail on a draw no earlier
# run made); HYPOTHESIS_PROFILE=explore draws fresh ones, to look for new counterexamples.
from hypothesis import settings as _hypothesis_settings  # noqa: E402

_hypothesis_settings.register_profile("reproducible", derandomize=True)
_hypothesis_settings.register_profile("explore", derandomize=False)
_hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "reproducible"))

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RAY_TEST_CPUS = 2


def _start_local_ray() -> None:
    import ray

    ray.init(address="local", include_dashboard=False, num_cpus=RAY_TEST_CPUS,
             _node_ip_address="127.0.0.1", logging_level=logging.WARNING, log_to_driver=False)


@pytest.fixture(scope="session")
def _ray_teardown():
    """Shut down whatever Ray the session left running."""
    yield
    import ray

    from helios.worker import stop_autoscaler_monitor

    if ray.is_initialized():
        stop_autoscaler_monitor()  # saves the second Ray's shutdown would wait for it
        ray.shutdown()


@pytest.fixture
def ray_local(_ray_teardown):
    """The session's local Ray (2 CPUs, loopback, no dashboard), started on first use."""
    import ray

    if not ray.is_initialized():
        _start_local_ray()
    yield ray


@pytest.fixture
def ray_cluster(_ray_teardown):
    """A two-node loopback Ray cluster (1 CPU per node), connected for this test only."""
    import ray
    from ray.cluster_utils import Cluster

    from helios.worker import stop_autoscaler_monitor

    if ray.is_initialized():
        stop_autoscaler_monitor()
        ray.shutdown()
    cluster = Cluster(initialize_head=True,
                      head_node_args={"num_cpus": 1, "node_ip_address": "127.0.0.1",
                                      "include_dashboard": False})
    cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
    ray.init(address=cluster.address, logging_level=logging.WARNING, log_to_driver=False)
    cluster.wait_for_nodes()
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture
def run_cells(ray_local, tmp_path):
    """``run(configs)``: their ``cells`` rows, in the order given, run as a sweep runs them
    (one simulation actor per CPU of the session's local Ray, so both CPUs work).

    For tests of many independent cells; results go under ``tmp_path``.
    """
    import dataclasses

    import pandas as pd

    from helios.cell import cell_id
    from helios.results import load
    from helios.runner import run_sweep

    def run(configs):
        configs = [dataclasses.replace(c, output_dir=str(tmp_path / "cells")) for c in configs]
        report = run_sweep(configs, progress=False, print_summary=False)
        assert not report.failed, report.failed
        frame = pd.concat([load(d) for d in report.sweep_dirs]).set_index("cell_id")
        return [frame.loc[cell_id(c)].to_dict() for c in configs]

    return run


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path, monkeypatch):
    """Every test runs in its own temporary folder, so that relative defaults
    (``output_dir=results``, Hydra's ``outputs/``) never land in the checkout."""
    monkeypatch.chdir(tmp_path)


def _checkout_state() -> set[str] | None:
    """Untracked and modified paths of the checkout (None outside a git work tree)."""
    import subprocess

    try:
        out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=ROOT,
                             capture_output=True, text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {line[3:] for line in out.splitlines()}


def pytest_sessionstart(session):
    session.config._checkout_before = _checkout_state()


def pytest_sessionfinish(session, exitstatus):
    """The suite leaves the checkout as it found it: a new or changed file fails the run."""
    before = getattr(session.config, "_checkout_before", None)
    after = _checkout_state()
    if before is None or after is None:
        return
    litter = sorted(after - before)
    if litter:
        print("\ntests left files in the checkout: " + ", ".join(litter[:20]), file=sys.stderr)
        session.exitstatus = 1
