"""Benchmark: echo-cine decode speed of medssl.io.load vs plain pydicom, and `medssl info` wall time.

Prints ONE JSON line. Usage: python benchmarks/io_decode.py [--repeats N] [FILE]
Times are the best of N (interleaved runs). ``medssl_info_wall_s`` runs the CLI as it is;
``io_info_probe_wall_s`` runs ``medssl.io.info(FILE)`` (decodes only the first and last frame).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_ECHO = REPO.parent / "shared" / "data" / "ultrasound" / "dicom" / "color3d_jpeg_baseline.dcm"
SAMPLE_ECHO = REPO / "medssl" / "samples" / "ultrasound" / "echo_cine_40f.dcm"


def _best_wall(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _run(cmd: list[str]) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {out.stderr.strip()[-300:]}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("file", nargs="?", help="DICOM cine (default: shared echo, else the shipped sample)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    if args.file:
        path = Path(args.file)
    elif SHARED_ECHO.is_file():
        path = SHARED_ECHO
    elif SAMPLE_ECHO.is_file():
        path = SAMPLE_ECHO
    else:
        print(json.dumps({"error": "no echo cine found (../shared/data absent and no shipped sample)"}))
        return 1

    import pydicom

    from medssl.io import load

    frames = int(pydicom.dcmread(path, stop_before_pixels=True).get("NumberOfFrames") or 1)
    load(path)  # warm-up: imports, file cache
    _ = pydicom.dcmread(path).pixel_array

    t_medssl = t_pydicom = float("inf")
    for _ in range(args.repeats):  # interleaved so both see the same machine load
        t_medssl = min(t_medssl, _best_wall(lambda: load(path), 1))
        t_pydicom = min(t_pydicom, _best_wall(lambda: pydicom.dcmread(path).pixel_array, 1))

    info_cmd = [sys.executable, "-m", "medssl", "info", str(path)]
    info_mode = "medssl info (python -m medssl info FILE)"
    try:
        _run(info_cmd)
    except RuntimeError:
        code = f"from medssl.io import load; import json; print(json.dumps(load({str(path)!r}).summary()))"
        info_cmd = [sys.executable, "-c", code]
        info_mode = "python -c load(P).summary() (CLI not available)"
        _run(info_cmd)
    imp_cmd = [sys.executable, "-c", "import pydicom"]
    probe_code = f"from medssl.io import info; import json; print(json.dumps(info({str(path)!r})))"
    probe_cmd = [sys.executable, "-c", probe_code]
    t_info = t_import = t_probe = float("inf")
    for _ in range(args.repeats):
        t_info = min(t_info, _best_wall(lambda: _run(info_cmd), 1))
        t_probe = min(t_probe, _best_wall(lambda: _run(probe_cmd), 1))
        t_import = min(t_import, _best_wall(lambda: _run(imp_cmd), 1))

    result = {
        "benchmark": "io_decode",
        "file": path.name,
        "frames": frames,
        "repeats": args.repeats,
        "medssl_load_s": round(t_medssl, 4),
        "pydicom_pixel_array_s": round(t_pydicom, 4),
        "medssl_fps": round(frames / t_medssl, 1),
        "pydicom_fps": round(frames / t_pydicom, 1),
        "fps_ratio_medssl_over_pydicom": round(t_pydicom / t_medssl, 3),
        "info_mode": info_mode,
        "medssl_info_wall_s": round(t_info, 4),
        "import_pydicom_wall_s": round(t_import, 4),
        "info_over_import_pydicom_ratio": round(t_info / t_import, 2),
        "io_info_probe_wall_s": round(t_probe, 4),
        "io_info_probe_over_import_pydicom_ratio": round(t_probe / t_import, 2),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
