"""Hydra plugins that run a Helios ``--multirun`` on Ray.

- ``hydra/launcher=helios_ray`` (:class:`HeliosRayLauncher`, the default in
  ``conf/config.yaml``): composes every job as Hydra's basic launcher does, validates
  it into a :class:`~helios.config.CellConfig`, and hands the whole batch to
  :func:`helios.runner.run_sweep` (Ray actors, resume, retries, progress). It returns
  one ``JobReturn`` per job; a cell that finally failed makes its job ``FAILED``,
  so the command exits with status 1 after the end summary.
- ``hydra/sweeper=helios`` (:class:`HeliosSweeper`): Hydra's basic sweeper (same
  syntax: ``a=1,2``, ``range()``, ``glob()``, ``hydra.sweeper.params`` in config
  files), except that it validates a batch through the launcher's fast composer,
  so each job is composed once instead of twice (see
  :class:`helios.compose.JobComposer`).

Hydra imports every module of ``hydra_plugins`` at start-up, single runs included,
so this module imports nothing heavy (Ray, the simulator) until a launch.
"""

# No ``from __future__ import annotations``: Hydra's plugin scanner executes this module
# before registering it in sys.modules, and dataclasses cannot resolve string annotations then.
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hydra._internal.core_plugins import basic_sweeper
from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, setup_globals
from hydra.errors import CompactHydraException
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)

_MODULE = "hydra_plugins.helios_ray_launcher.helios_ray_launcher"


@dataclass
class HeliosRayLauncherConf:
    _target_: str = f"{_MODULE}.HeliosRayLauncher"
    progress: bool = True  # live progress bar on stderr


@dataclass
class HeliosSweeperConf(basic_sweeper.BasicSweeperConf):
    _target_: str = f"{_MODULE}.HeliosSweeper"


ConfigStore.instance().store(group="hydra/launcher", name="helios_ray",
                             node=HeliosRayLauncherConf, provider="helios")
ConfigStore.instance().store(group="hydra/sweeper", name="helios",
                             node=HeliosSweeperConf, provider="helios")


class SweepFailed(CompactHydraException):
    """Some cells of the sweep finally failed; Hydra prints this and exits with status 1."""


class CellJobReturn(JobReturn):
    """A ``JobReturn`` whose ``cfg`` (the cell's config as a ``DictConfig``) is built when
    first read: nothing in a multirun reads it unless a callback does, and building one
    per job cost ~10 ms, as much as running a near-empty cell."""

    def __init__(self, *, cell: Any, **kwargs: Any) -> None:
        self._cell, self._cfg = cell, None
        super().__init__(**kwargs)

    @property  # type: ignore[override]
    def cfg(self) -> DictConfig:
        if self._cfg is None:
            from helios.config import to_dict

            self._cfg = OmegaConf.create(to_dict(self._cell))
        return self._cfg

    @cfg.setter
    def cfg(self, value: DictConfig | None) -> None:
        self._cfg = value


class HeliosSweeper(basic_sweeper.BasicSweeper):
    """Hydra's basic sweeper, validating batches with the launcher's composer."""

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        compose_jobs = getattr(self.launcher, "compose_jobs", None)
        if compose_jobs is None:  # another launcher: Hydra's own check
            super().validate_batch_is_legal(batch)
        else:
            compose_jobs(batch)


class HeliosRayLauncher(Launcher):
    """Run a batch of Hydra jobs as Helios cells on Ray (see the module docstring)."""

    def __init__(self, progress: bool = True) -> None:
        super().__init__()
        self.progress = progress
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None
        self._composer: Any = None
        self._jobs: dict[tuple[str, ...], tuple[DictConfig, Any]] = {}
        self._seedless: dict[tuple[str, ...], tuple[DictConfig, Any]] = {}  # by split_seed's rest

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function

    def compose_jobs(self, job_overrides: Sequence[Sequence[str]]) -> list[tuple[DictConfig, Any]]:
        """Compose and validate every job: ``[(hydra config, CellConfig), ...]``.

        A job that does not validate prints the one-line config error and exits 2,
        before any cell runs.
        """
        from helios.compose import JobComposer

        assert self.hydra_context is not None and self.config is not None
        if self._composer is None:
            loader = self.hydra_context.config_loader
            self._composer = JobComposer(
                load=lambda ov: loader.load_sweep_config(self.config, list(ov)),
                is_group=loader.repository.group_exists)  # type: ignore[attr-defined]
        out = []
        for overrides in job_overrides:
            key = tuple(overrides)
            if key not in self._jobs:
                self._jobs[key] = self._compose_job(key)
            out.append(self._jobs[key])
        return out

    def _compose_job(self, overrides: tuple[str, ...]) -> tuple[DictConfig, Any]:
        """One job's (hydra config, CellConfig). A job that differs from a composed one only
        by its seed shares that one's Hydra config (what Hydra would compose but for the
        seed) and is not composed again."""
        from helios.config import cell_config
        from helios.errors import ConfigError
        from helios.compose import cell_mapping, split_seed, with_seed

        seed, rest = split_seed(overrides)
        try:
            if seed is not None and rest in self._seedless:
                base_config, base_cell = self._seedless[rest]
                return base_config, with_seed(base_cell, seed)
            sweep_config = self._composer.compose(list(overrides))
            job = (sweep_config, cell_config(cell_mapping(sweep_config)))
        except ConfigError as err:
            print(err.one_line(), file=sys.stderr)
            raise SystemExit(2) from None
        if seed is not None:
            self._seedless.setdefault(rest, job)
        return job

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
               ) -> Sequence[JobReturn]:
        from helios.identity import cell_id
        from helios.errors import StorageError
        from helios.runner import Interrupted, run_sweep
        from helios.worker import RayUnreachable

        setup_globals()
        assert self.config is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        jobs = self.compose_jobs(job_overrides)
        labels = [" ".join(filter_overrides(ov)) for ov in job_overrides]
        ray_cfg = jobs[0][1].ray
        log.info(f"Launching {len(jobs)} jobs on Ray")
        try:
            report = run_sweep([cell for _, cell in jobs], labels=labels,
                               num_workers=ray_cfg.num_workers, max_retries=ray_cfg.max_retries,
                               address=ray_cfg.address, progress=self.progress,
                               connect_timeout_s=ray_cfg.connect_timeout_s)
        except StorageError as err:
            raise SweepFailed(f"helios: error: {err}") from None
        except RayUnreachable as err:
            print(f"helios: error: {err}", file=sys.stderr)
            raise SystemExit(2) from None
        except Interrupted as stop:
            print(stop.line(), file=sys.stderr, flush=True)
            os._exit(stop.exit_code)  # Ray is down; skip Hydra's and atexit's teardown noise
        failure = None
        if report.failed:
            names = ", ".join(f"{cid} [{f['label']}]" for cid, f in report.failed.items())
            failure = SweepFailed(f"helios: {len(report.failed)} of {report.total} cells failed: "
                                  f"{names}")
        returns = []
        cwd = os.getcwd()
        for idx, ((sweep_config, cell), overrides) in enumerate(zip(jobs, job_overrides)):
            with open_dict(sweep_config):
                sweep_config.hydra.job.id = initial_job_idx + idx
                sweep_config.hydra.job.num = initial_job_idx + idx
            cid = cell_id(cell)
            ret = CellJobReturn(cell=cell, overrides=list(overrides), hydra_cfg=sweep_config,
                                working_dir=cwd, task_name=str(sweep_config.hydra.job.name))
            if cid in report.failed:
                ret.status, ret.return_value = JobStatus.FAILED, failure
            else:
                ret.status = JobStatus.COMPLETED
                ret.return_value = report.summaries.get(cid, "already done")
            returns.append(ret)
        return returns
