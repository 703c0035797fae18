"""The bundle runtime shared by ``medssl pretrain|finetune|infer|bundle`` (see docs/dev/bundle_contract.md).

A bundle is a MONAI bundle folder. ``medssl`` parses one of its workflow configs with
``monai.bundle.ConfigParser``, applies the command line as overrides (``bundle_root`` is always the bundle's
absolute path) and evaluates the config's ``run`` list, exactly what
``python -m monai.bundle run --config_file bundles/<name>/configs/<workflow>.json`` does with the defaults.
Nothing here knows a particular bundle.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medssl.errors import InputError, MedsslError

__all__ = [
    "WORKFLOWS",
    "SCHEMA_FILE",
    "bundles_root",
    "available_bundles",
    "bundle_dir",
    "config_files",
    "load_bundle_config",
    "run_workflow",
    "verify_metadata",
    "verify_bundle",
]

WORKFLOWS = ("pretrain", "finetune", "inference", "multi_gpu_pretrain")
SCHEMA_FILE = Path(__file__).resolve().parent / "bundle_schema" / "meta_schema_20240725.json"
MODELS_LIMIT_BYTES = 25 * 1024 * 1024


def bundles_root() -> Path:
    """Where bundles live: ``$MEDSSL_BUNDLES``, else ``bundles/`` in the source checkout."""
    env = os.environ.get("MEDSSL_BUNDLES")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1] / "bundles"


def available_bundles() -> list[str]:
    """Names of the bundles that are present (a folder with ``configs/metadata.json``)."""
    root = bundles_root()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "configs" / "metadata.json").is_file())


def bundle_dir(name: str) -> Path:
    """The folder of bundle ``name``.

    Raises:
        MedsslError: no such bundle (the message lists the available ones).
    """
    if name not in available_bundles():
        have = ", ".join(available_bundles()) or "none yet"
        raise MedsslError(f"{name}: no such bundle in {bundles_root()} (available: {have})")
    return bundles_root() / name


def config_files(name: str, workflow: str) -> list[Path]:
    """The config files of a workflow, in merge order (``multi_gpu_pretrain`` = pretrain + its overrides)."""
    if workflow not in WORKFLOWS:
        raise ValueError(f"workflow must be one of {WORKFLOWS}, got {workflow!r}.")
    cfg = bundle_dir(name) / "configs"
    files = [cfg / "pretrain.json", cfg / "multi_gpu_pretrain.json"] if workflow == "multi_gpu_pretrain" else [
        cfg / f"{workflow}.json"
    ]
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise MedsslError(f"{name}: this bundle has no {workflow} workflow ({missing[0]} not found)")
    return files


def load_bundle_config(name: str, workflow: str, overrides: Mapping[str, Any] | None = None) -> Any:
    """A ``monai.bundle.ConfigParser`` over a bundle workflow's config, metadata read, overrides applied.

    Args:
        name: bundle name.
        workflow: ``pretrain``, ``finetune``, ``inference`` or ``multi_gpu_pretrain``.
        overrides: config ids (``"max_steps"``, ``"network_def#channels"``) to new values; ``None`` values are
            skipped, so unset command-line options keep the config's defaults.

    Returns:
        The parser (not yet evaluated).
    """
    from monai.bundle import ConfigParser

    root = bundle_dir(name)
    parser = ConfigParser()
    parser.read_config([os.fspath(f) for f in config_files(name, workflow)])
    parser.read_meta(os.fspath(root / "configs" / "metadata.json"))
    parser["bundle_root"] = os.fspath(root.resolve())
    for key, value in (overrides or {}).items():
        if value is not None:
            parser[key] = value
    return parser


def run_workflow(name: str, workflow: str, overrides: Mapping[str, Any] | None = None) -> list[Any]:
    """Evaluate a workflow's ``run`` list (after its optional ``initialize``), as the MONAI bundle CLI does.

    The bundle folder is put on ``sys.path`` so configs can ``$import scripts...``.

    Returns:
        The values of the ``run`` expressions.
    """
    parser = load_bundle_config(name, workflow, overrides)
    root = os.fspath(bundle_dir(name).resolve())
    _use_bundle_scripts(root)
    if "run" not in parser:
        raise MedsslError(f"{name}: {workflow} config has no 'run' list")
    parser.parse(reset=True)
    results: list[Any] = []
    for section in ("initialize", "run", "finalize"):
        if section not in parser:
            continue
        content = parser[section]
        ids = [f"{section}#{i}" for i in range(len(content))] if isinstance(content, list) else [section]
        for sub in ids:
            try:
                value = parser.get_parsed_content(sub)
            except Exception as exc:
                raise _user_error(exc) from exc
            if section == "run":
                results.append(value)
    return results


def _user_error(exc: BaseException) -> BaseException:
    """The :class:`MedsslError` behind MONAI's "Failed to evaluate" wrapper, if any (so it stays one line)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, MedsslError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return exc


def _use_bundle_scripts(root: str) -> None:
    """Put ``root`` first on ``sys.path`` and forget another bundle's ``scripts`` package.

    Every bundle names its thin module ``scripts``, so one imported for another bundle must not be reused, and
    another bundle's folder left on ``sys.path`` must not shadow this one's: such folders are taken off the path.
    """
    root = os.path.abspath(root)
    for entry in list(sys.path):
        if not entry or os.path.abspath(entry) == root:
            continue
        if os.path.isfile(os.path.join(entry, "scripts", "__init__.py")) and os.path.isdir(
            os.path.join(entry, "configs")
        ):
            sys.path.remove(entry)  # another bundle's folder
    while root in sys.path:
        sys.path.remove(root)
    sys.path.insert(0, root)
    loaded = sys.modules.get("scripts")
    where = getattr(loaded, "__path__", None) or [getattr(loaded, "__file__", "") or ""]
    if loaded is not None and not any(os.path.abspath(os.fspath(p)).startswith(root + os.sep) for p in where):
        for key in [k for k in sys.modules if k == "scripts" or k.startswith("scripts.")]:
            del sys.modules[key]


def verify_metadata(meta_file: str | os.PathLike[str], schema_file: str | os.PathLike[str] = SCHEMA_FILE) -> None:
    """Validate a bundle's ``metadata.json`` against the shipped MONAI schema (no download).

    Raises:
        InputError: the metadata does not validate (one line: the failing part).
    """
    import logging
    import warnings

    from monai.bundle import verify_metadata as monai_verify

    if not Path(meta_file).is_file():
        raise InputError(meta_file, "metadata file not found")
    logging.disable(logging.INFO)  # MONAI logs its input summary at INFO level
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "no hash value provided" for the shipped schema
            monai_verify(meta_file=os.fspath(meta_file), filepath=os.fspath(schema_file))
    except ValueError as exc:
        raise InputError(meta_file, f"metadata does not validate: {' '.join(str(exc).split())[:300]}") from None
    finally:
        logging.disable(logging.NOTSET)


def _folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) if folder.is_dir() else 0


def _check_shapes(name: str, meta: Mapping[str, Any]) -> dict[str, Any]:
    """Run the inference config's ``network_def`` on zeros shaped as the metadata's first input.

    Checks the channel count of each declared output the network returns (a tensor = the first output).
    """
    import torch

    parser = load_bundle_config(name, "inference")
    if "network_def" not in parser:
        return {"checked": False, "reason": "inference.json defines no network_def"}
    fmt = meta["network_data_format"]
    in_name, inp = next(iter(fmt["inputs"].items()))
    spatial = [int(v) if isinstance(v, int) or str(v).isdigit() else 64 for v in inp.get("spatial_shape", [])]
    x = torch.zeros(1, int(inp["num_channels"]), *spatial)
    net = parser.get_parsed_content("network_def")
    net.eval()
    with torch.no_grad():
        y = net(x)
    outputs = fmt["outputs"]
    got = {next(iter(outputs)): y} if isinstance(y, torch.Tensor) else dict(y) if isinstance(y, Mapping) else {}
    shapes: dict[str, Any] = {"input": {in_name: list(x.shape)}, "output": {}}
    for key, tensor in got.items():
        if key not in outputs or not isinstance(tensor, torch.Tensor):
            continue
        want = int(outputs[key]["num_channels"])
        if tensor.ndim < 2 or tensor.shape[1] != want:
            raise MedsslError(f"{name}: network output {key!r} has shape {tuple(tensor.shape)}, metadata says "
                              f"{want} channels")
        if inp.get("is_patch_data") and outputs[key].get("is_patch_data") and tuple(tensor.shape[2:]) != tuple(
            spatial
        ):
            raise MedsslError(f"{name}: network output {key!r} {tuple(tensor.shape)} is not the input's size")
        shapes["output"][key] = list(tensor.shape)
    return shapes


def verify_bundle(name: str, output_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Check a bundle: metadata schema, network input/output shapes, models/ size, inference on its sample.

    Args:
        name: bundle name.
        output_dir: where the sample inference writes (default: a temporary folder).

    Returns:
        A JSON-ready report ``{"bundle", "metadata", "shapes", "models_mb", "inference"}``.

    Raises:
        MedsslError / InputError: the first check that fails, as one line.
    """
    import tempfile

    root = bundle_dir(name)
    meta_path = root / "configs" / "metadata.json"
    verify_metadata(meta_path)
    meta = json.loads(meta_path.read_text())
    report: dict[str, Any] = {"bundle": name, "metadata": "valid"}

    report["shapes"] = _check_shapes(name, meta)

    models = root / "models"
    size = _folder_bytes(models)
    if size > MODELS_LIMIT_BYTES:
        raise MedsslError(f"{name}: models/ holds {size / 2**20:.1f} MB, more than the 25 MB limit")
    report["models_mb"] = round(size / 2**20, 2)

    with tempfile.TemporaryDirectory() as tmp:
        out_dir = Path(output_dir) if output_dir is not None else Path(tmp)
        try:
            results = run_workflow(name, "inference", {"output_dir": os.fspath(out_dir), "device": "cpu"})
        except SystemExit as exc:  # a bundle whose inference exits on bad input
            if exc.code not in (0, None):
                raise MedsslError(f"{name}: sample inference exited with code {exc.code}") from None
            results = []
        for result in results:
            if isinstance(result, Mapping) and result.get("failed"):
                raise MedsslError(f"{name}: sample inference failed: {result['failed'][0]}")
        summary = next((r for r in results if isinstance(r, Mapping) and "outputs" in r), None)
        if summary is not None:
            report["inference"] = {k: sorted(Path(p).name for p in v.values()) for k, v in summary["outputs"].items()}
        else:
            report["inference"] = sorted(p.name for p in out_dir.rglob("*") if p.is_file())
    return report
