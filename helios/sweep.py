"""Command line: ``python -m helios.sweep [--multirun] [overrides...]``.

Without ``--multirun`` it runs one cell with the composed config, prints the one-line
summary and writes the cell's Parquet parts under ``<output_dir>/<sweep>/``.

Every cell the command line describes is composed and validated *before* Hydra
starts any job: a bad value prints ``helios: config error: <key>=<value>: <allowed>``
and exits with status 2, with no traceback and nothing written.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from helios.config import CellConfig, cell_config
from helios.errors import ConfigError

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
CONFIG_NAME = "config"
GROUPS = ("topology", "model", "scenario", "strategy")


def group_options(group: str) -> list[str]:
    """Names of the options of config group ``group`` (its YAML files)."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


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
                           "-cd", "--experimental-rerun", "--package", "-p", "--info", "-i")
            continue
        overrides.append(arg)
    return overrides, multirun


def _override_error(override: str, exc: Exception) -> ConfigError:
    """Turn a Hydra composition error for ``override`` into a :class:`ConfigError`."""
    key, _, value = override.lstrip("+~").partition("=")
    group = key.split("@")[0]
    if group in GROUPS:
        return ConfigError(group, value, "one of " + ", ".join(group_options(group)))
    if "not in struct" in str(exc) or "Could not override" in str(exc):
        return ConfigError(key, value, "unknown key (see conf/config.yaml and conf/<group>/)")
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ConfigError(key, value, first)


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
    from hydra.core.override_parser.overrides_parser import OverridesParser

    cell_overrides = [o for o in overrides if not o.lstrip("+~").startswith("hydra")]
    parser = OverridesParser.create()
    for override in cell_overrides:
        try:
            parser.parse_override(override)
        except Exception as exc:  # Hydra raises OverrideParseException
            raise ConfigError(override.partition("=")[0], override.partition("=")[2],
                              "a valid override key=value") from exc
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        try:
            cfg = hydra_compose(config_name=CONFIG_NAME, overrides=cell_overrides)
        except Exception as exc:
            raise _first_bad_override(cell_overrides, exc) from exc
    GlobalHydra.instance().clear()
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def _first_bad_override(overrides: Sequence[str], exc: Exception) -> ConfigError:
    from hydra import compose as hydra_compose

    for i, override in enumerate(overrides):
        try:
            hydra_compose(config_name=CONFIG_NAME, overrides=list(overrides[: i + 1]))
        except Exception as inner:
            return _override_error(override, inner)
    return ConfigError("config", " ".join(overrides), str(exc).strip().splitlines()[0])


def expand(overrides: Sequence[str], multirun: bool) -> list[list[str]]:
    """The override list of every job a command line describes (Hydra's basic sweep)."""
    if not multirun:
        return [list(overrides)]
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(overrides))
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def preflight(argv: Sequence[str]) -> list[CellConfig]:
    """Compose and validate every cell of a command line; raises :class:`ConfigError`."""
    overrides, multirun = split_argv(argv)
    try:
        jobs = expand(overrides, multirun)
    except Exception as exc:
        raise ConfigError("overrides", " ".join(overrides), f"a valid Hydra sweep ({exc})") from exc
    if not jobs:
        raise ConfigError("overrides", " ".join(overrides), "a sweep with at least one cell")
    return [cell_config(compose(job)) for job in jobs]


def run_one(cfg: CellConfig) -> str:
    """Run a cell, write its parts, and return the summary line."""
    from helios.cell import run_cell
    from helios.results import write_cell

    result = run_cell(cfg)
    sweep_dir = Path(cfg.output_dir) / cfg.sweep
    write_cell(sweep_dir, result.cell_id, result.tables, result.config)
    print(f"helios: cell {result.cell_id} written to {sweep_dir}", file=sys.stderr)
    return result.summary


@hydra.main(config_path=str(CONF_DIR), config_name=CONFIG_NAME, version_base="1.3")
def _app(cfg: DictConfig) -> None:
    data = OmegaConf.to_container(cfg, resolve=True)
    print(run_one(cell_config(data)), flush=True)  # type: ignore[arg-type]


def main(argv: Sequence[str] | None = None) -> None:
    """Validate the whole command line, then hand it to Hydra."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not any(a in ("--help", "-h", "--hydra-help", "--info", "-i") for a in argv):
        try:
            preflight(argv)
        except ConfigError as err:
            print(err.one_line(), file=sys.stderr)
            raise SystemExit(2) from None
    sys.argv = [sys.argv[0], *argv]
    _app()


if __name__ == "__main__":
    main()
