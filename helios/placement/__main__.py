"""``python -m helios.placement export SOURCE --format sglang|eplb --out FILE``.

``SOURCE`` is a placement: a file of the placement cache
(``<output_dir>/placement_cache/<key>.json``), a cache key (looked up in ``--cache``,
default ``results/placement_cache``), or a results folder holding exactly one cached
placement (``<folder>/placement_cache/`` or the folder itself). ``--model`` names the
model config (``conf/model/<name>.yaml``) whose layer and expert counts the file must
cover; the SGLang map needs the dense layers too. Errors: one line, exit status 2,
nothing written.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from helios.errors import ConfigError
from helios.placement.base import Placement
from helios.placement.cache import DiskPlacementCache
from helios.placement.deploy import FORMATS, to_document, write_document

KEY = re.compile(r"[0-9a-f]{64}")


def load_source(source: str, cache_dir: str) -> Placement:
    """The placement ``source`` names (module doc)."""
    path = Path(source)
    if KEY.fullmatch(source) and not path.exists():
        path = Path(cache_dir) / f"{source}.json"
    if path.is_dir():
        folder = path / "placement_cache" if (path / "placement_cache").is_dir() else path
        found = sorted(folder.glob("*.json"))
        if len(found) != 1:
            keys = ", ".join(p.stem[:12] for p in found) or "none"
            raise ConfigError("SOURCE", source, f"a folder with exactly one cached placement "
                                                f"(found {len(found)}: {keys}); pass its key")
        path = found[0]
    if not path.is_file() or not KEY.fullmatch(path.stem):
        raise ConfigError("SOURCE", source, "a placement cache file <key>.json, a key or a results folder")
    placement = DiskPlacementCache(path.parent).get(path.stem)
    if placement is None:
        raise ConfigError("SOURCE", source, "an intact placement cache file (this one fails its checksum)")
    return placement


def model_layers(name: str) -> tuple[int, int, int]:
    """(experts, MoE layers, dense layers) of the model config ``name``."""
    from helios.config import ModelConfig, from_mapping
    from helios.compose import CONF_DIR

    import yaml

    path = Path(CONF_DIR) / "model" / f"{name}.yaml"
    if not path.is_file():
        names = ", ".join(sorted(p.stem for p in path.parent.glob("*.yaml")))
        raise ConfigError("--model", name, f"one of {names}")
    model = from_mapping(ModelConfig, yaml.safe_load(path.read_text()), "model")
    return model.num_experts, model.num_moe_layers, model.num_dense_layers


def export(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m helios.placement export",
                                     description="Write a placement in a serving engine's format.")
    parser.add_argument("source", metavar="SOURCE")
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("--out", required=True, help="file to write (JSON)")
    parser.add_argument("--model", default="deepseek_v3", help="model config name (default deepseek_v3)")
    parser.add_argument("--cache", default="results/placement_cache", help="cache folder for a key")
    args = parser.parse_args(list(argv))
    experts, moe_layers, dense_layers = model_layers(args.model)
    placement = load_source(args.source, args.cache)
    if placement.num_experts != experts:
        raise ConfigError("--model", args.model, f"a model of {placement.num_experts} experts "
                                                 f"(the placement's), not {experts}")
    if placement.layers != moe_layers:
        raise ConfigError("SOURCE", args.source,
                          f"a placement of all {moe_layers} MoE layers of {args.model} (it covers "
                          f"{placement.layers}; solve it with sim.layers=null)")
    doc = to_document(placement, args.format, experts, dense_layers)
    out = write_document(doc, args.out)
    slots = len(doc.get("physical_to_logical_map", doc.get("phy2log"))[0])
    print(f"wrote {out}: {args.format}, {placement.layers} MoE layers, {placement.num_gpus} GPUs, "
          f"{slots} physical slots per layer ({slots // placement.num_gpus} per GPU)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "export":
        print(f"helios: config error: command={argv[0] if argv else ''}: export", file=sys.stderr)
        return 2
    try:
        return export(argv[1:])
    except ConfigError as err:
        print(f"helios: config error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
