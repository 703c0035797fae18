"""The ECG MAE study in one command: pretrain, then LUDB delineation and diagnosis, pretrained vs scratch.

    python bundles/ecg_mae_classification/scripts/experiment.py [--quick] [--device cpu]
        [--budget-minutes 60] [--data ../shared/data/ecg] [--seeds 0 1 2] [--fractions 2 16 0.25 0.5 1.0]

1. MAE pretraining (time + frequency + coarse targets) on LUDB records 1-120, CinC 2021, PTB (MIT-BIH is
   skipped: 2 leads) -- never on the LUDB test records 121-160.
   MIT-BIH 100 beat classification (N vs A, scripts/mitbih.py) from the pretrained and a random encoder.
2. For every label fraction (an int = a number of records, a float = a fraction of the 102 training
   records left after 18 validation records) and seed (seed = draw of the records and training seed):
   delineation fine-tuning and diagnosis (linear probe and fine-tuning), pretrained and scratch with the
   same recipe; scored on the 40 fixed test records.
3. Rows go to docs/results.json (medssl.eval.results.append_result); the README table is re-rendered; the
   pretrained, 100 %-label models (seed 0) go to models/ (float16 state dicts, atomic).

    python bundles/ecg_mae_classification/scripts/experiment.py --evaluate bundles/ecg_mae_classification/models \
        --results bundles/ecg_mae_classification/docs/shipped_model.json

re-scores a models/ folder as it is stored (float16) on the 40 LUDB test records (delineation and diagnosis)
and writes its rows (label fraction 1.0, seed 0, init "pretrained") to --results; nothing is trained.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts import ecg_bundle as eb  # noqa: E402

BUNDLE = Path(__file__).resolve().parents[1]


def _fraction_label(f: float, pool: int) -> tuple[float, int | None, float | None]:
    """(label_fraction for the row, count, fraction)."""
    if f >= 1.0 and float(f).is_integer() and f > 1:
        return min(1.0, f / pool), int(f), None
    return float(f), None, float(f)


def main(argv: list[str] | None = None) -> int:
    """Run the study; returns 0."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=None, help="ECG data root (default ../shared/data/ecg)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--budget-minutes", type=float, default=60.0, help="sizes the step counts")
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny steps, 1 seed, 2 fractions")
    ap.add_argument("--seeds", type=int, nargs="+", default=None)
    ap.add_argument("--fractions", type=float, nargs="+", default=None)
    ap.add_argument("--pretrain-steps", type=int, default=None)
    ap.add_argument("--finetune-steps", type=int, default=None, help="delineation fine-tuning steps")
    ap.add_argument("--diagnosis-steps", type=int, default=None, help="default: the delineation steps")
    ap.add_argument("--final-steps", type=int, default=None, help="steps of the shipped 100 %% models")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--results", type=Path, default=BUNDLE / "docs" / "results.json")
    ap.add_argument("--models", type=Path, default=BUNDLE / "models")
    ap.add_argument("--no-models", action="store_true", help="do not write models/")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument(
        "--encoder",
        type=Path,
        default=None,
        help="use these pretrained encoder weights instead of pretraining (e.g. a previous study's)",
    )
    ap.add_argument(
        "--tasks",
        nargs="+",
        default=["delineation", "diagnosis", "mitbih"],
        choices=["delineation", "diagnosis", "mitbih", "reconstruction"],
        help="downstream parts to run ('reconstruction' alone: pretrain and score the masked patches)",
    )
    ap.add_argument(
        "--target-norm",
        choices=["patch", "lead"],
        default="patch",
        help="MAE targets normalised per patch (norm_pix, the default) or per lead",
    )
    ap.add_argument(
        "--tokens",
        choices=["lead", "mixed"],
        default="lead",
        help="MAE tokens: one per lead and patch (ST-MEM, the default) or one per patch of all 12 leads "
        "('mixed'; its rows are named pretrained_mixed / scratch_mixed; not with mitbih; the models/ it "
        "writes record tokens='mixed' in model_config.json)",
    )
    ap.add_argument(
        "--evaluate",
        type=Path,
        default=None,
        metavar="MODELS",
        help="only re-score this models/ folder on the LUDB test records (rows to --results)",
    )
    ap.add_argument(
        "--inits",
        nargs="+",
        default=["pretrained", "scratch"],
        choices=["pretrained", "scratch"],
        help="encoder initialisations to fine-tune (scratch rows do not depend on the pretraining)",
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*AUROC.*")
    command = "python bundles/ecg_mae_classification/scripts/experiment.py " + shlex.join(argv or sys.argv[1:])
    t0 = time.time()
    root = args.data or eb.default_data_root()
    if root is None or not (Path(root) / "ludb" / "data").is_dir():
        print("experiment: LUDB not found (pass --data ../shared/data/ecg)", file=sys.stderr)
        return 2
    if args.evaluate is not None:
        return evaluate_models(args.evaluate, Path(root), args.results, command)
    if args.tokens == "mixed" and "mitbih" in args.tasks:
        print("experiment: --tokens mixed does not work with the mitbih task (it passes two leads' tokens)",
              file=sys.stderr)
        return 2
    # budget: minutes -> steps (CPU, 1 thread: ~0.5 s per pretraining step, ~1.2 s per fine-tuning step)
    if args.quick:
        seeds, fractions, pre_steps, ft_steps = [0], args.fractions or [2.0, 1.0], 20, 6
    else:
        seeds = args.seeds or [0, 1, 2]
        fractions = args.fractions or [2.0, 16.0, 0.25, 0.5, 1.0]
        runs = len(seeds) * len(fractions) * 2
        budget_s = args.budget_minutes * 60
        pre_steps = args.pretrain_steps or int(0.25 * budget_s / 0.5)
        ft_steps = args.finetune_steps or max(20, int(0.7 * budget_s / runs / 2 / 1.3))
    work = Path(args.work or tempfile.mkdtemp(prefix="ecg_study_"))
    work.mkdir(parents=True, exist_ok=True)
    split_dir = BUNDLE / "docs" / "splits"
    split_dir.mkdir(parents=True, exist_ok=True)
    diag_steps = args.diagnosis_steps or ft_steps
    final_steps = args.final_steps or ft_steps
    print(f"[study] pretrain {pre_steps} steps, fine-tune {ft_steps} steps, seeds {seeds}, fractions {fractions}")

    from medssl.eval.metrics import choose_threshold, macro_auroc
    from medssl.eval.results import append_result, render_results_table
    from medssl.eval.splits import label_fraction_split, save_split

    # 1. pretraining (or a given encoder)
    hist: dict | None = None
    enc_path: str | None = None
    if "pretrained" not in args.inits:
        print("[study] scratch only: no pretraining")
    elif args.encoder is not None:
        if not args.encoder.is_file():
            print(f"experiment: {args.encoder}: encoder weights not found", file=sys.stderr)
            return 2
        enc_path = str(args.encoder)
        print(f"[study] encoder {enc_path} (no pretraining)")
    else:
        hist = eb.pretrain(
            Path(root),
            work / "pretrain",
            max_steps=pre_steps,
            batch_size=16,
            device=args.device,
            norm_pix=args.target_norm == "patch",
            channel_tokens=args.tokens == "lead",
        )
        enc_path = hist["encoder"]
        losses = hist["loss"]
        print(
            f"[study] pretrained on {len(hist['records'])} records; loss {losses[0]:.3f} -> "
            f"{np.mean(losses[-10:]):.3f} ({time.time() - t0:.0f} s)"
        )

    # 2. LUDB

    records = eb.ludb_items(root)
    by_name = {r.name: r for r in records}
    test = [by_name[i] for i in eb.LUDB_TEST_IDS if i in by_name]
    rq = eb.reconstruction_metrics(hist["method"], [r.x for r in test]) if hist is not None else {}
    for k, v in rq.items():
        append_result(
            args.results,
            {
                "task": "mae_reconstruction_ludb_test" + ("_mixed_tokens" if args.tokens == "mixed" else ""),
                "label_fraction": 1.0,
                "seed": 0,
                "init": "pretrained",
                "metric": k,
                "value": v,
                "split_file": "LUDB records 121-160",
                "command": command,
            },
        )
    if rq:
        print(f"[study] reconstruction on LUDB test: {rq}")
    # MIT-BIH beats (normal vs atrial premature): pretrained against random encoder and the RR baseline
    mitbih_header = Path(root) / "mitbih_arrhythmia_100" / "100.hea"
    if mitbih_header.is_file() and "mitbih" in args.tasks and enc_path is not None:
        from scripts import mitbih

        for r in mitbih.evaluate(mitbih_header, {"pretrained": enc_path, "random_frozen": None}, seeds=seeds):
            append_result(args.results, {"task": mitbih.TASK, "split_file": mitbih.SPLIT, "command": command, **r})
        print(f"[study] MIT-BIH beat classification scored ({time.time() - t0:.0f} s)")
    ids = [r.name for r in records]
    strata = eb.ludb_split_labels(root)  # the splits' strata, not the trained diagnoses: splits stay fixed
    labels = {r.name: strata[r.name] for r in records}
    pool = len(ids) - len(test)
    n_val = 18
    final: dict[str, object] = {}

    def row(task: str, lf: float, seed: int, init: str, metric: str, value: float, split_file: str) -> None:
        if np.isfinite(value):
            append_result(
                args.results,
                {
                    "task": task,
                    "label_fraction": round(lf, 4),
                    "seed": seed,
                    "init": init,
                    "metric": metric,
                    "value": float(value),
                    "split_file": split_file,
                    "command": command,
                },
            )

    y_test = np.stack([r.diagnosis for r in test])

    def auroc_rows(task: str, at: tuple[float, int, str], init_name: str, p: np.ndarray) -> float:
        """Rows of the macro AUROC and of each diagnosis' AUROC at ``(label fraction, seed, split file)``."""
        lf, seed, sf = at
        scores = eb.auroc_by_diagnosis(p, y_test)  # macro first: the table's headline metric
        for metric, value in scores.items():
            row(task, lf, seed, init_name, metric, value, sf)
        return scores["macro_auroc"]

    downstream = bool({"delineation", "diagnosis"} & set(args.tasks))
    for f in fractions if downstream else []:
        for seed in seeds:
            lf_val, count, frac = _fraction_label(f, pool - n_val)
            split = label_fraction_split(
                ids,
                labels,
                fraction=frac,
                count=count,
                seed=seed,
                test_ids=list(eb.LUDB_TEST_IDS),
                val_fraction=n_val / pool,
            )
            tag = f"n{count}" if count else f"f{frac}"
            split_file = split_dir / f"ludb_{tag}_seed{seed}.json"
            save_split(split_file, split)
            sf = str(split_file.relative_to(BUNDLE))
            train = [by_name[i] for i in split.train]
            val = [by_name[i] for i in split.val]
            at = (lf_val, seed, sf)
            if "diagnosis" in args.tasks:
                ref = auroc_rows("ludb_diagnosis_features", at, "hand_features", eb.feature_baseline(train, test))
                print(f"[study] {tag} seed {seed}: hand-feature reference AUROC {ref:.3f}", flush=True)
            for init_name, init in (("pretrained", enc_path), ("scratch", None)):
                if init_name not in args.inits:
                    continue
                row_init = init_name + ("_mixed" if args.tokens == "mixed" else "")
                tag_dir = work / f"{tag}_s{seed}_{init_name}"
                if "delineation" in args.tasks:
                    dl = eb.train_delineation(
                        train, init, tag_dir / "delin", max_steps=ft_steps, seed=seed, device=args.device,
                        tokens=args.tokens,
                    )
                    s = eb.score_records(dl, test)
                    for k, v in s.items():
                        row("ludb_delineation", lf_val, seed, row_init, k, v, sf)
                    print(
                        f"[study] {tag} seed {seed} {row_init}: delineation mean F1 {s['mean_f1']:.3f} "
                        f"MAE {s['mean_abs_error_ms']:.1f} ms; P offset F1 {s['P_offset_f1']:.3f}, T onset F1 "
                        f"{s['T_onset_f1']:.3f} ({time.time() - t0:.0f} s)",
                        flush=True,
                    )
                if "diagnosis" not in args.tasks:
                    shutil.rmtree(tag_dir, ignore_errors=True)
                    continue
                # diagnosis: fine-tune and linear probe
                clf = eb.train_diagnosis(
                    train, init, tag_dir / "diag", max_steps=diag_steps, seed=seed, device=args.device,
                    tokens=args.tokens,
                )
                a_ft = auroc_rows("ludb_diagnosis_finetune", at, row_init, eb.diagnosis_scores(clf, test))
                a_lp = auroc_rows("ludb_diagnosis_linear_probe", at, row_init,
                                  eb.probe_diagnosis(train, test, init, tokens=args.tokens))
                print(
                    f"[study] {tag} seed {seed} {row_init}: AUROC ft {a_ft:.3f} lp {a_lp:.3f} "
                    f"({time.time() - t0:.0f} s)",
                    flush=True,
                )
                if init_name == "pretrained" and seed == seeds[0] and "delineation" in args.tasks:
                    pv = eb.diagnosis_scores(clf, val)
                    yv = np.stack([r.diagnosis for r in val])
                    thr = choose_threshold(pv, yv, "f1")
                    final = {"clf": clf, "dl": dl, "thr": thr, "tag": tag, "n_train": len(train)}
                shutil.rmtree(tag_dir, ignore_errors=True)
    # the shipped models: pretrained, all training records, seed 0 (trained here if 100 % was not in the grid)
    if downstream and enc_path is None and not args.no_models:
        print("[study] scratch only: no models written")
    elif downstream and not args.no_models and (not final or final["n_train"] < pool - n_val):
        split = label_fraction_split(
            ids, labels, fraction=1.0, seed=seeds[0], test_ids=list(eb.LUDB_TEST_IDS), val_fraction=n_val / pool
        )
        split_file = split_dir / f"ludb_f1.0_seed{seeds[0]}.json"
        save_split(split_file, split)
        sf = str(split_file.relative_to(BUNDLE))
        train = [by_name[i] for i in split.train]
        val = [by_name[i] for i in split.val]
        dl = eb.train_delineation(
            train, enc_path, work / "final_delin", max_steps=final_steps, seed=seeds[0], device=args.device,
            tokens=args.tokens,
        )
        clf = eb.train_diagnosis(
            train, enc_path, work / "final_diag", max_steps=final_steps, seed=seeds[0], device=args.device,
            tokens=args.tokens,
        )
        final_init = "pretrained" + ("_mixed" if args.tokens == "mixed" else "")
        s = eb.score_records(dl, test)
        for k, v in s.items():
            row("ludb_delineation", 1.0, seeds[0], final_init, k, v, sf)
        y = np.stack([r.diagnosis for r in test])
        row(
            "ludb_diagnosis_finetune",
            1.0,
            seeds[0],
            final_init,
            "macro_auroc",
            macro_auroc(eb.diagnosis_scores(clf, test), y),
            sf,
        )
        thr = choose_threshold(eb.diagnosis_scores(clf, val), np.stack([r.diagnosis for r in val]), "f1")
        final = {"clf": clf, "dl": dl, "thr": thr, "tag": "f1.0", "n_train": len(train)}
        print(
            f"[study] final (100 %, pretrained): delineation mean F1 {s['mean_f1']:.3f} "
            f"MAE {s['mean_abs_error_ms']:.1f} ms ({time.time() - t0:.0f} s)",
            flush=True,
        )
    # 3. models and table
    if downstream and not args.no_models and final and enc_path is not None:
        enc = eb.build_encoder(channel_tokens=args.tokens == "lead")
        eb.load_encoder_weights(enc, enc_path)
        # the MAE decoder, so that inference can draw the masked reconstruction: from this run's pretraining,
        # or from the pretraining checkpoint given as --encoder or kept beside the given encoder.pt
        decoder = None
        if hist is not None:
            decoder = hist["method"].decoder
        else:
            for ckpt in (Path(enc_path), Path(enc_path).parent / "checkpoints" / "last.pt"):
                if ckpt.is_file() and (decoder := eb.mae_decoder_from_checkpoint(ckpt, enc)) is not None:
                    print(f"[study] MAE decoder from {ckpt}")
                    break
        info = {
            "trained_on": f"LUDB {final['n_train']} records ({final['tag']}), seed {seeds[0]}",
            # with --encoder the pretraining ran elsewhere: record the --pretrain-steps given, if any
            "pretrain_steps": pre_steps if hist is not None else args.pretrain_steps,
            "finetune_steps": final_steps,
            "quick": bool(args.quick),
        }
        paths = eb.save_models(
            args.models,
            final["clf"],
            final["dl"],
            list(np.atleast_1d(final["thr"])),
            enc,
            info,
            tokens=args.tokens,
            mae_decoder=decoder,
        )
        size = sum(p.stat().st_size for p in paths)
        print(f"[study] models: {', '.join(p.name for p in paths)} ({size / 1e6:.1f} MB)")
    readme = BUNDLE / "docs" / "README.md"
    if readme.is_file() and args.results.resolve() == (BUNDLE / "docs" / "results.json").resolve():
        render_results_table(args.results, readme)  # another --results file never rewrites the model card
    (work / "done.json").write_text(json.dumps({"seconds": time.time() - t0}))
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    print(f"[study] done in {time.time() - t0:.0f} s; rows in {args.results}")
    return 0


def evaluate_models(model_dir: Path, root: Path, results: Path, command: str) -> int:
    """Re-score a models/ folder on the 40 LUDB test records; rows (fraction 1.0, seed 0) go to ``results``."""
    from medssl.errors import MedsslError
    from medssl.eval.results import append_result

    try:
        clf, dl, cfg = eb.load_models(model_dir)
    except MedsslError as exc:
        print(f"experiment: {exc}", file=sys.stderr)
        return 2
    test = eb.ludb_items(root, eb.LUDB_TEST_IDS)
    y = np.stack([r.diagnosis for r in test])
    auroc = eb.auroc_by_diagnosis(eb.diagnosis_scores(clf, test), y)
    scores = {("ludb_diagnosis_finetune", k): v for k, v in auroc.items()}
    if dl is not None:
        for k, v in eb.score_records(dl, test).items():
            scores["ludb_delineation", k] = v
    # external test: the CinC 2021 records (pretraining saw them unlabelled; no label of theirs was ever used).
    # Only sinus rhythm has positives there (NSR; left axis deviation has none); the hand-feature reference is
    # trained on the shipped models' LUDB training records.
    cinc_labels = root / "cinc2021_12lead" / "labels.csv"
    if cinc_labels.is_file():
        from medssl.eval.metrics import macro_auroc
        from medssl.eval.splits import load_split

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # unusable records are skipped by name at load time
            cinc = eb.cinc_items(cinc_labels.parent)
        si = eb.DIAGNOSES.index("sinus_rhythm")
        y_ext = np.array([r.diagnosis[si] for r in cinc])
        split = load_split(BUNDLE / "docs" / "splits" / "ludb_f1.0_seed0.json")
        by_name = {r.name: r for r in eb.ludb_items(root, split.train)}
        ref = eb.feature_baseline([by_name[i] for i in split.train], cinc)
        ext = "cinc2021_external_sinus_rhythm"
        scores[ext, "auroc_sinus_rhythm"] = macro_auroc(eb.diagnosis_scores(clf, cinc)[:, [si]], y_ext[:, None])
        scores[ext, "auroc_sinus_rhythm_hand_features"] = macro_auroc(ref[:, [si]], y_ext[:, None])
        scores[ext, "n_records"] = float(len(cinc))
        scores[ext, "n_positive"] = float(y_ext.sum())
    for (task, metric), value in scores.items():
        if np.isfinite(value):
            append_result(
                results,
                {
                    "task": task,
                    "label_fraction": 1.0,
                    "seed": 0,
                    "init": "pretrained",
                    "metric": metric,
                    "value": float(value),
                    "split_file": "docs/splits/ludb_f1.0_seed0.json",
                    "command": command,
                    "trained_on": cfg.get("trained_on", ""),
                },
            )
    print(json.dumps({f"{t}/{m}": round(float(v), 4) for (t, m), v in scores.items() if m in (
        "macro_auroc", "mean_f1", "mean_abs_error_ms") or t.startswith("cinc")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
