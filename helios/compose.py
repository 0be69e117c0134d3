"""Composing a command line's cells with Hydra, and checking them all before anything runs.

- :func:`compose` gives one cell's config mapping from overrides, as Hydra composes it;
  :func:`expand` turns a ``--multirun`` command line into every job's overrides.
- Named sweeps: the files of ``sweeps/`` are registered in Hydra's ConfigStore as
  options of the config group ``sweeps`` (:func:`register_sweeps`), and
  ``+sweep=<name>`` is rewritten to ``+sweeps=<name>`` (:func:`rewrite_sweep_overrides`).
- :class:`JobComposer` composes a multirun's jobs once each (seeds that differ only in
  ``seed`` share one composition, :func:`with_seed`).
- :func:`preflight` composes and validates every cell and checks that every results
  folder is writable, raising :class:`~helios.errors.ConfigError` before any job starts.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from helios.config import CellConfig, cell_config
from helios.errors import ConfigError

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
SWEEPS_DIR = CONF_DIR.parent / "sweeps"
SWEEP_GROUP = "sweeps"
CONFIG_NAME = "config"
GROUPS = ("topology", "model", "scenario", "strategy")


def group_options(group: str) -> list[str]:
    """Names of the options of config group ``group`` (its YAML files)."""
    folder = SWEEPS_DIR if group in ("sweep", SWEEP_GROUP) else CONF_DIR / group
    return sorted(p.stem for p in folder.glob("*.yaml"))


def register_sweeps() -> None:
    """Register ``sweeps/*.yaml`` in Hydra's ConfigStore as options of group ``sweeps``."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for path in sorted(SWEEPS_DIR.glob("*.yaml")):
        store.store(group=SWEEP_GROUP, name=path.stem, node=OmegaConf.load(path),
                    package="_global_", provider="helios")


def rewrite_sweep_overrides(argv: Sequence[str]) -> list[str]:
    """``+sweep=<name>`` (the documented form) becomes ``+sweeps=<name>`` (the group)."""
    return [f"+{SWEEP_GROUP}=" + a.partition("=")[2] if a.startswith("+sweep=") else a
            for a in argv]


def split_argv(argv: Sequence[str]) -> tuple[list[str], bool]:
    """Config overrides of a command line (Hydra flags dropped) and whether it is a multirun."""
    multirun = any(a in ("--multirun", "-m") for a in argv)
    overrides, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg.startswith("-"):
            # Hydra flags that take a value as the next argument.
            skip = arg in ("--config-path", "-cp", "--config-name", "-cn", "--config-dir",
                           "-cd", "--experimental-rerun", "--package", "-p", "--info", "-i",
                           "--cfg", "-c")
            continue
        overrides.append(arg)
    return overrides, multirun


def _override_error(override: str, exc: Exception) -> ConfigError:
    """Turn a Hydra composition error for ``override`` into a :class:`ConfigError`."""
    key, _, value = override.lstrip("+~").partition("=")
    group = key.split("@")[0]
    if group in GROUPS:
        return ConfigError(group, value, "one of " + ", ".join(group_options(group)))
    if group == SWEEP_GROUP:
        return ConfigError("sweep", value,
                           "a named sweep, one of " + ", ".join(group_options(group)))
    if "not in struct" in str(exc) or "Could not override" in str(exc):
        if key.split(".")[:2] in (["strategy", s] for s in ("ilp", "eplb", "adaptation")):
            # A valid key that this strategy's YAML does not set (its dataclass default applies).
            return ConfigError(key, value, f"not set by this strategy's file; add it with ++{key}={value}")
        return ConfigError(key, value, "unknown key (see conf/config.yaml and conf/<group>/)")
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ConfigError(key, value, first)


def check_override_syntax(overrides: Sequence[str]) -> None:
    """Raise :class:`ConfigError` for the first override Hydra's grammar rejects."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for override in overrides:
        try:
            parser.parse_override(override)
        except Exception as exc:  # Hydra raises OverrideParseException
            raise ConfigError(override.partition("=")[0], override.partition("=")[2],
                              "a valid override key=value") from exc


def compose(overrides: Sequence[str]) -> dict[str, Any]:
    """Compose ``conf/`` with ``overrides`` into a plain dict (no ``hydra`` section).

    Raises
    ------
    ConfigError
        For an unknown group option, an unknown key or a malformed override.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_sweeps()
    cell_overrides = [o for o in rewrite_sweep_overrides(overrides)
                      if not o.lstrip("+~").startswith("hydra")]
    check_override_syntax(cell_overrides)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        try:
            cfg = hydra_compose(config_name=CONFIG_NAME, overrides=cell_overrides)
        except Exception as exc:
            raise _first_bad_override(cell_overrides, exc) from exc
    GlobalHydra.instance().clear()
    return resolved(cfg)


def resolved(cfg: Any) -> dict[str, Any]:
    """``cfg`` as plain containers with interpolations resolved; a failing interpolation
    (``${oc.env:NO_SUCH_VAR}``) is a :class:`ConfigError` naming its key."""
    from omegaconf.errors import OmegaConfBaseException

    try:
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "config"
        try:  # the unresolved text, e.g. ${oc.env:NO_SUCH_VAR}
            node = cfg
            for part in key.split("."):
                node = node._get_node(part)
            raw = node._value()
        except Exception:  # noqa: BLE001 - the raw text is a courtesy
            raw = ""
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(key, raw, f"a value whose interpolation resolves ({message})") from None


def _first_bad_override(overrides: Sequence[str], exc: Exception) -> ConfigError:
    from hydra import compose as hydra_compose

    for i, override in enumerate(overrides):
        try:
            hydra_compose(config_name=CONFIG_NAME, overrides=list(overrides[: i + 1]))
        except Exception as inner:
            return _override_error(override, inner)
    return ConfigError("config", " ".join(overrides), str(exc).strip().splitlines()[0])


def is_hydra_override(override: str) -> bool:
    """Whether a command-line override addresses Hydra itself (``hydra.*``, ``hydra/*``)."""
    return override.lstrip("+~").startswith("hydra")


def expand(overrides: Sequence[str], multirun: bool,
           params: dict[str, Any] | None = None) -> list[list[str]]:
    """The override list of every job a command line describes (Hydra's basic sweep).

    ``params`` is ``hydra.sweeper.params`` of the composed config (e.g. from a named
    sweep); command-line overrides of the same key win, as in Hydra's sweeper.
    """
    if not multirun:
        return [list(overrides)]
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    hydra_state = GlobalHydra.instance()
    loader = hydra_state.config_loader() if hydra_state.is_initialized() else None  # for glob()
    args = [f"{k}={v}" for k, v in (params or {}).items()] + list(overrides)
    parsed = OverridesParser.create(config_loader=loader).parse_overrides(args)
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def cell_mapping(cfg: DictConfig) -> dict[str, Any]:
    """The resolved cell part (everything but ``hydra``) of a composed config."""
    keys = [k for k in cfg if k != "hydra"]
    return resolved(OmegaConf.masked_copy(cfg, keys))


class JobComposer:
    """Compose the jobs of a sweep with Hydra's semantics, but quickly.

    Hydra composes a job in two steps: it builds a config from the defaults list
    (the group choices, e.g. ``strategy=greedy`` or ``+sweep=smoke``), then applies
    the remaining key overrides (``seed=3``) to it. The first step costs ~0.15 s a
    job (it re-reads YAML files and rebuilds the ``hydra`` node); the second ~1 ms.
    A sweep varies mostly plain keys, so this runs the first step once per distinct
    set of group (and ``hydra``) overrides and applies the plain overrides to a deep
    copy, with the function Hydra itself uses for its second step. The result equals
    Hydra's, except that ``hydra.overrides.task`` lists only the group overrides.

    Parameters
    ----------
    load : callable
        Full Hydra composition of a list of overrides (with the ``hydra`` node).
    is_group : callable
        Whether a name is a config group (``ConfigRepository.group_exists``).
    """

    def __init__(self, load: Callable[[list[str]], DictConfig], is_group: Callable[[str], bool]):
        from hydra.core.override_parser.overrides_parser import OverridesParser

        self._load = load
        self._is_group = is_group
        self._bases: dict[tuple[str, ...], DictConfig] = {}
        self._parser = OverridesParser.create()

    def compose(self, overrides: Sequence[str]) -> DictConfig:
        """The composed config (``hydra`` node included) of one job."""
        from hydra._internal.config_loader_impl import ConfigLoaderImpl

        parsed = self._parser.parse_overrides(list(overrides))
        # Anything that changes the defaults list (a group choice, a package, Hydra's own
        # settings) goes to the full composition; the rest are plain key overrides.
        structural = [o for o in parsed if o.is_hydra_override() or o.package is not None
                      or o.is_sweep_override() or self._is_group(o.key_or_group)]
        plain = [o for o in parsed if o not in structural]
        key = tuple(o.input_line for o in structural)
        if key not in self._bases:
            self._bases[key] = self._load(list(key))
        cfg = copy.deepcopy(self._bases[key])
        ConfigLoaderImpl._apply_overrides_to_config(plain, cfg)
        return cfg


def _compose_sweep(overrides: list[str]) -> list[CellConfig]:
    """Expand and validate a multirun (Hydra must be initialised on ``conf/``)."""
    from hydra import compose as hydra_compose
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    hydra_overrides = [o for o in overrides if is_hydra_override(o)]
    task = [o for o in overrides if not is_hydra_override(o)]
    check_override_syntax(task)

    def load(job: list[str]) -> DictConfig:
        try:
            return hydra_compose(config_name=CONFIG_NAME, overrides=hydra_overrides + job,
                                 return_hydra_config=True)
        except Exception as exc:
            raise _first_bad_override(job, exc) from exc

    parser = OverridesParser.create()
    fixed = [o for o in task if not parser.parse_override(o).is_sweep_override()]
    params_node = load(fixed).hydra.sweeper.get("params")
    params = {} if params_node is None else OmegaConf.to_container(params_node)
    try:
        jobs = expand(task, True, params)  # type: ignore[arg-type]
    except Exception as exc:
        raise ConfigError("overrides", " ".join(overrides), f"a valid Hydra sweep ({exc})") from exc
    if not jobs:
        raise _empty_sweep(task, params or {})
    composer = JobComposer(load, GlobalHydra.instance().config_loader().repository.group_exists)
    cells = []
    by_rest: dict[tuple[str, ...], CellConfig] = {}  # cells that differ only by their seed
    for job in jobs:
        seed, rest = split_seed(job)
        if seed is not None and rest in by_rest:
            cells.append(with_seed(by_rest[rest], seed))
            continue
        try:
            composed = composer.compose(job)
        except ConfigError:
            raise
        except Exception as exc:
            raise _first_bad_override(job, exc) from exc
        cells.append(cell_config(cell_mapping(composed)))
        if seed is not None:
            by_rest[rest] = cells[-1]
    return cells


def split_seed(overrides: Sequence[str]) -> tuple[str | None, tuple[str, ...]]:
    """``(the one "seed=<n>" override or None, the other overrides)`` of a job: jobs with the
    same other overrides differ only by their seed."""
    seeds = [o for o in overrides if re.fullmatch(r"seed=\d+", o)]
    rest = tuple(o for o in overrides if o not in seeds)
    return (seeds[0] if len(seeds) == 1 else None), rest


def with_seed(cell: CellConfig, override: str) -> CellConfig:
    """``cell`` with the seed of ``seed=<n>``, range-checked as ``cell_config`` would: no
    other check depends on the seed, so a sweep validates each seed-free cell once."""
    from helios.config.build import _check_range

    value = int(override.partition("=")[2])
    meta = {f.name: f.metadata for f in dataclasses.fields(CellConfig)}["seed"]
    _check_range(value, meta, "seed", value)
    return dataclasses.replace(cell, seed=value)


def _empty_sweep(task: Sequence[str], params: dict[str, Any]) -> ConfigError:
    """The error of a sweep that expands to no cell, naming the override that is empty."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    hydra_state = GlobalHydra.instance()
    loader = hydra_state.config_loader() if hydra_state.is_initialized() else None  # for glob()
    parser = OverridesParser.create(config_loader=loader)
    for text in [f"{k}={v}" for k, v in params.items()] + list(task):
        with contextlib.suppress(Exception):
            override = parser.parse_overrides([text])[0]  # (parse_override skips the loader)
            if override.is_sweep_override() and not any(
                    BasicSweeper.split_arguments([override], None)):
                key, _, value = text.lstrip("+~").partition("=")
                return ConfigError(key, value, "a sweep over at least one value")
    return ConfigError("overrides", " ".join(task), "a sweep with at least one cell")


def preflight(argv: Sequence[str], check_dirs: bool = True) -> list[CellConfig]:
    """Compose and validate every cell of a command line and check its results folders.

    Raises
    ------
    ConfigError
        For the first bad value, or an ``output_dir`` this process cannot write to.
    """
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from helios.storage import check_output_dirs

    register_sweeps()
    overrides, multirun = split_argv(rewrite_sweep_overrides(argv))
    if not multirun:
        cells = [cell_config(compose(overrides))]
    else:
        GlobalHydra.instance().clear()
        try:
            with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
                cells = _compose_sweep(overrides)
        finally:
            GlobalHydra.instance().clear()
    if check_dirs:
        check_output_dirs(cells)
    return cells
