"""The ``metafit`` command line: argparse -> config dataclasses -> :mod:`metafit.app.runs`.

Subcommands: ``train``, ``eval``, ``predict``, ``fuse``, ``plot``, ``report``,
``data {list,verify,fetch}``.
The CLI holds no learning logic: it maps flags onto :class:`~metafit.app.config.RunConfig` fields and
calls the drivers. Bad input exits with status 2 and one line on stderr (``--debug`` re-raises
for a traceback); a diverged run exits with status 1.

Examples::

    metafit train --dataset sinusoid --algo maml --steps 2000 --run-dir runs/sine
    metafit train config.yaml --set train.outer_lr=3e-4 --run-dir runs/a --resume
    metafit eval runs/sine --k-shot 5 10 --episodes 600
    metafit predict runs/omni --support support/ --query query/ --out predictions.csv
    metafit fuse --base runs/omni-a --base runs/omni-b --k-shot 1 --out-dir runs/fusion
    metafit plot runs/sine
    metafit report runs/a runs/b --out report/
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from metafit.app.config import ALGORITHMS, PATHS
from metafit.app.runs import RunError

__all__ = ["main", "build_parser"]

EXIT_USAGE = 2
EXIT_FAILED = 1


def _out(text: str) -> None:
    sys.stdout.write(text if text.endswith("\n") else text + "\n")


def _err(text: str) -> None:
    sys.stderr.write(f"metafit: error: {text}\n")


# -- train -----------------------------------------------------------------------------------------


def _train_config(args: argparse.Namespace) -> Any:
    from metafit.app.config import RunConfig, apply_overrides, load_config

    run_dir = Path(args.run_dir) if args.run_dir else None
    if args.config:
        config = load_config(args.config)
    elif args.resume and run_dir is not None and (run_dir / "config.json").exists():
        from metafit.app.runs import checkpoint_config

        config = checkpoint_config(json.loads((run_dir / "config.json").read_text(encoding="utf-8")))
    else:
        config = RunConfig()
    sets: list[str] = []
    if args.dataset:
        sets.append(f"data.dataset={args.dataset}")
    if args.label_column:
        sets.append(f"data.label_column={args.label_column}")
    if args.algo:
        sets.append(f"algo.name={args.algo}")
    if args.steps is not None:
        sets.append(f"train.steps={args.steps}")
    if args.seed is not None:
        sets.append(f"train.seed={args.seed}")
    if args.data_root:
        sets.append(f"data.data_root={args.data_root}")
    if args.path:
        sets.append(f"train.path={args.path}")
    if args.max_minutes is not None:
        sets.append(f"train.max_minutes={args.max_minutes}")
    if args.tensorboard:
        sets.append("train.tensorboard=true")
    sets += args.set or []
    return apply_overrides(config, sets)


def _relaunch_with_torchrun(argv: Sequence[str], nproc: int) -> int:
    """``metafit train ... --nproc N``: the same command under ``torch.distributed.run`` (torchrun)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun_main

    rest, skip = [], False
    for a in argv:  # drop --nproc N / --nproc=N: each worker is a plain `metafit train`
        if skip:
            skip = False
            continue
        if a == "--nproc":
            skip = True
            continue
        if a.startswith("--nproc="):
            continue
        rest.append(a)
    threads = max(1, (os.cpu_count() or 1) // nproc)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    try:
        torchrun_main(
            [
                "--standalone",
                f"--nproc-per-node={nproc}",
                "--max-restarts=0",
                "--monitor-interval=0.1",
                "-m",
                "metafit",
                *rest,
            ]
        )
    except ChildFailedError as e:
        failed = "; ".join(f"rank {r}: exit code {f.exitcode}" for r, f in sorted(e.failures.items()))
        raise RunError(
            f"the {nproc}-process run failed ({failed}); the last checkpoint is intact, resume with --resume"
        ) from None
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    if args.nproc < 1:
        raise ValueError(f"--nproc must be >= 1, got {args.nproc}")
    if not args.seeds:
        return _train_one(args)
    if args.seed is not None:
        raise ValueError(f"give --seed or --seeds, not both (got --seed {args.seed} and --seeds {args.seeds})")
    if len(set(args.seeds)) != len(args.seeds):
        raise ValueError(f"--seeds must be distinct, got {args.seeds}")
    for seed in args.seeds:
        one = argparse.Namespace(**vars(args))
        one.seed, one.seeds = seed, None
        if args.run_dir:
            one.run_dir = f"{args.run_dir}-seed{seed}"
        if args.nproc > 1:  # each seed is its own torchrun launch
            one.argv = [
                *_drop_seeds(args.argv),
                "--seed",
                str(seed),
                *(["--run-dir", one.run_dir] if args.run_dir else []),
            ]
        rc = _train_one(one)
        if rc:
            return rc
    return 0


def _drop_seeds(argv: Sequence[str]) -> list[str]:
    """``argv`` without ``--seeds S...`` and ``--run-dir D`` (re-added per seed)."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--seeds":
            i += 1
            while i < len(argv) and not argv[i].startswith("-"):
                i += 1
            continue
        if a == "--run-dir":
            i += 2
            continue
        if a.startswith(("--seeds=", "--run-dir=")):
            i += 1
            continue
        out.append(a)
        i += 1
    return out


def _record_invocation(
    run_dir: Path, argv: Sequence[str], started: float, commit: str | None, step: int | None, *, running: bool = False
) -> None:
    """Records this command's provenance in ``<run>/provenance.json`` (a resumed run lists each
    invocation). With ``running`` the entry says ``"status": "running"`` and no final step (written
    when training starts, so a killed command still leaves its record); the finished command's
    entry then replaces it."""
    from metafit.app.provenance import provenance
    from metafit.checkpoint import atomic_write_bytes

    path = run_dir / "provenance.json"
    try:
        done = json.loads(path.read_text())["invocations"] if path.is_file() else []
    except (OSError, ValueError, KeyError, TypeError):
        done = []
    entry = {**provenance(argv, started=started, commit=commit), "final_step": step}
    entry["status"] = "running" if running else "finished"
    if done and done[-1].get("status") == "running" and done[-1].get("started") == entry["started"]:
        done[-1] = entry  # this command's own running record
    else:
        done.append(entry)
    atomic_write_bytes(path, (json.dumps({"invocations": done}, indent=1) + "\n").encode())


def _record_start(run_dir: Path, argv: Sequence[str], started: float, commit: str | None) -> Any:
    """A callback that writes this command's "running" provenance record once training starts
    (the run folder exists then; rank 0 only)."""
    from metafit.engine import Callback

    class RecordStart(Callback):
        def on_fit_start(self, trainer: Any) -> None:
            if int(os.environ.get("RANK", "0")) == 0:
                _record_invocation(run_dir, argv, started, commit, None, running=True)

    return RecordStart()


def _train_one(args: argparse.Namespace) -> int:
    from metafit.app.runs import apply_process_settings, eval_markdown, train

    config = _train_config(args)
    under_torchrun = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if args.nproc > 1 and not under_torchrun:
        if config.train.path == "auto":
            raise ValueError(
                "--nproc needs an explicit engine path (--path loop or --path vmap), got train.path='auto'"
            )
        return _relaunch_with_torchrun(args.argv, args.nproc)
    run_dir = Path(args.run_dir or Path("runs") / f"{config.data.dataset}-{config.algo.name}-seed{config.train.seed}")
    apply_process_settings(config)  # the CLI owns its process
    if under_torchrun:
        from metafit.distributed import cleanup, init_from_env

        init_from_env(timeout=config.train.dist_timeout)  # launched by torchrun: join its process group
    from metafit.app.provenance import start_commit

    started, commit = time.time(), start_commit()
    record = _record_start(run_dir, args.argv, started, commit)
    try:
        result = train(
            config, run_dir, resume=args.resume, force=args.force, progress=not args.quiet, callbacks=[record]
        )
    finally:
        if under_torchrun:
            cleanup()
    if under_torchrun and int(os.environ.get("RANK", "0")) != 0:
        return 0
    _record_invocation(Path(result.run_dir), args.argv, started, commit, result.step)
    if not args.quiet:
        _out(f"run folder: {result.run_dir}  (step {result.step}, engine path {result.path})")
        if result.last_checkpoint:
            _out(f"last checkpoint: {result.last_checkpoint}")
        if result.eval:
            _out(eval_markdown(result.eval))
    return 0


# -- eval ------------------------------------------------------------------------------------------


def _check_flags(args: argparse.Namespace, ints: dict[str, int], floats: Sequence[str]) -> None:
    """Flags given as ints with a minimum, or floats that must be finite and > 0 (one-line errors)."""
    import math

    for flag, minimum in ints.items():
        values = getattr(args, flag.lstrip("-").replace("-", "_"))
        for v in values if isinstance(values, list) else [values]:
            if v is not None and v < minimum:
                raise ValueError(f"{flag} must be an int >= {minimum}, got {v}")
    for flag in floats:
        v = getattr(args, flag.lstrip("-").replace("-", "_"))
        if v is not None and not (math.isfinite(v) and v > 0):
            raise ValueError(f"{flag} must be a finite number > 0, got {v}")


def cmd_eval(args: argparse.Namespace) -> int:
    from metafit.app.provenance import provenance, start_commit
    from metafit.app.runs import eval_markdown, evaluate_checkpoint
    from metafit.checkpoint import atomic_write_bytes

    started, commit = time.time(), start_commit()
    _check_flags(
        args,
        {"--inner-steps": 0, "--episodes": 1, "--n-way": 2, "--k-shot": 1, "--n-query": 1, "--seed": 0},
        ["--inner-lr"],
    )
    if args.protocol != "standard" or args.inductive or args.imbalanced_query is not None or args.calibration:
        # the harder protocols and calibration: the run through `metafit compare`'s machinery (the
        # same fixed episodes, with the raw nearest-centroid baseline beside it)
        from metafit.app.compare import compare, compare_markdown

        if args.inner_steps is not None or args.inner_lr is not None:
            raise ValueError(
                "--inner-steps/--inner-lr cannot be combined with --protocol/--inductive/--imbalanced-query/--calibration"
            )
        if args.imbalanced_query is not None and not args.imbalanced_query > 0:
            raise ValueError(f"--imbalanced-query must be a Dirichlet concentration > 0, got {args.imbalanced_query}")
        settings = [(args.n_way, k) for k in args.k_shot] if (args.n_way and args.k_shot) else None
        out = compare(
            [args.target],
            settings=settings,
            episodes=args.episodes or 600,
            seed=2024 if args.seed is None else args.seed,
            protocol=args.protocol,
            dataset=args.dataset,
            n_query=args.n_query,
            imbalanced=args.imbalanced_query,
            inductive=args.inductive,
        )
        _out(json.dumps(out, indent=1) if args.json else compare_markdown(out))
        return 0

    out = evaluate_checkpoint(
        args.target,
        shots=args.k_shot,
        n_way=args.n_way,
        n_query=args.n_query,
        episodes=args.episodes,
        inner_steps=args.inner_steps,
        inner_lr=args.inner_lr,
        seed=args.seed,
        data_root=args.data_root,
        recalibrate=args.recalibrate,
        dataset=args.dataset,
        label_column=args.label_column,
        test_rotations=args.test_rotations,
    )
    out = {"provenance": provenance(getattr(args, "argv", []), started=started, commit=commit), **out}
    target = Path(args.target)
    default = (target if target.is_dir() else target.parent.parent) / "eval_cli.json"
    out_path = Path(args.out) if args.out else default
    out_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out_path, (json.dumps(out, indent=1) + "\n").encode())
    md = eval_markdown(out)
    out_path.with_suffix(".md").write_text(md, encoding="utf-8")
    if args.json:
        _out(json.dumps({k: v for k, v in out.items()}, indent=1))
    else:
        _out(md)
        _out(f"written: {out_path} and {out_path.with_suffix('.md')}")
    return 0


# -- compare ---------------------------------------------------------------------------------------


def _setting(text: str) -> tuple[int, int]:
    try:
        n, k = (int(v) for v in text.split(":"))
    except ValueError:
        raise ValueError(f"--setting must look like N_WAY:K_SHOT (e.g. 5:1), got {text!r}") from None
    if n < 2 or k < 1:
        raise ValueError(f"--setting needs n_way >= 2 and k_shot >= 1, got {text!r}")
    return n, k


def cmd_compare(args: argparse.Namespace) -> int:
    from metafit.app.compare import compare, compare_markdown
    from metafit.app.provenance import provenance, start_commit
    from metafit.checkpoint import atomic_write_bytes

    started, commit = time.time(), start_commit()
    _check_flags(args, {"--episodes": 1, "--n-query": 1, "--seed": 0, "--k-shot": 1, "--ensemble": 1}, [])
    if args.imbalanced_query is not None and not args.imbalanced_query > 0:
        raise ValueError(f"--imbalanced-query must be a Dirichlet concentration > 0, got {args.imbalanced_query}")
    settings = [_setting(s) for s in args.setting] if args.setting else None
    out = compare(
        args.runs,
        settings=settings,
        episodes=args.episodes,
        seed=args.seed,
        baseline=args.baseline,
        protocol=args.protocol,
        dataset=args.dataset,
        n_query=args.n_query,
        imbalanced=args.imbalanced_query,
        inductive=args.inductive,
        alpha=args.alpha,
        test=args.test,
        temperature=args.temperature_scale,
        shots=args.k_shot,
        ensemble=args.ensemble,
    )
    out = {"provenance": provenance(getattr(args, "argv", []), started=started, commit=commit), **out}
    md = compare_markdown(out)
    if args.out:
        p = Path(args.out)
        p.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(p, (json.dumps(out, indent=1) + "\n").encode())
        atomic_write_bytes(p.with_suffix(".md"), md.encode())
        from metafit.app.reliability import plot_reliability

        for s in out["settings"]:  # one reliability diagram per run and setting, next to the JSON
            for name, sc in s["scores"].items():
                if "calibration" in sc:
                    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)
                    png = p.parent / f"{p.stem}_reliability_{s['n_way']}w{s['k_shot']}s_{safe}.png"
                    plot_reliability(
                        sc["calibration"]["diagram"],
                        png,
                        ece=sc["calibration"]["ece"],
                        title=f"{name}, {s['n_way']}-way {s['k_shot']}-shot",
                    )
    _out(json.dumps(out, indent=1) if args.json else md)
    if args.out:
        _out(f"written: {args.out} and {Path(args.out).with_suffix('.md')}")
    return 0


# -- predict ---------------------------------------------------------------------------------------


def cmd_predict(args: argparse.Namespace) -> int:
    from metafit.app.predict import predict_files, write_predictions_csv

    rows, classes = predict_files(args.checkpoint, args.support, args.query)
    if args.out:
        write_predictions_csv(rows, classes, args.out)
        _out(f"{len(rows)} predictions written to {args.out}")
    else:
        import io

        buf = io.StringIO()
        write_predictions_csv(rows, classes, buf)
        _out(buf.getvalue())
    return 0


# -- fuse ------------------------------------------------------------------------------------------


def cmd_fuse(args: argparse.Namespace) -> int:
    from metafit.app.fuse import run_fusion

    out_dir = Path(args.out_dir or Path("runs") / f"fuse-{args.n_way}way{args.k_shot}shot-seed{args.seed}")
    run = run_fusion(
        args.base or [],
        data_root=args.data_root,
        n_way=args.n_way,
        k_shot=args.k_shot,
        n_query=args.n_query,
        steps=args.steps,
        episodes=args.episodes,
        train_tasks=args.train_tasks,
        seed=args.seed,
        out_dir=out_dir,
        force=args.force,
    )
    if args.json:
        _out(json.dumps({k: v for k, v in run.results.items() if k != "per_task_accuracy"}, indent=1))
        return 0
    s = run.results["settings"]
    _out(
        f"{s['n_way']}-way {s['k_shot']}-shot, {s['episodes']} test episodes ({s['n_query']} queries/class), "
        f"{len(run.bases)} base models: " + ", ".join(b.name for b in run.bases)
    )
    _out(run.markdown())
    _out(f"written: {run.json_path}, {out_dir / 'fusion.md'} and {run.checkpoint}")
    return 0


# -- plot / report ---------------------------------------------------------------------------------


def cmd_plot(args: argparse.Namespace) -> int:
    from metafit.app.plotting import plot_run

    paths = plot_run(args.run_dir, out_dir=args.out)
    for p in paths:
        _out(str(p))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from metafit.app.report import write_report

    md, html = write_report(args.run_dirs, args.out, compare_files=args.compare or [])
    _out(f"written: {md} and {html}")
    return 0


# -- data ------------------------------------------------------------------------------------------


def _root(args: argparse.Namespace) -> Path:
    root = args.data_root or os.environ.get("METAFIT_DATA")
    if not root:
        raise ValueError("no data root: pass --data-root DIR or set METAFIT_DATA")
    return Path(root)


def cmd_data_info(args: argparse.Namespace) -> int:
    from metafit.data.sources import resolve_dataset

    root = args.data_root or os.environ.get("METAFIT_DATA")
    channels = args.channels if args.channels == "auto" else int(args.channels)
    src = resolve_dataset(
        args.dataset, root=root, image_size=args.image_size, channels=channels, label_column=args.label_column
    )
    info = src.info()
    if args.json:
        _out(json.dumps(info, indent=1, default=str))
        return 0
    _out(f"dataset {info['name']}: example shape {tuple(info['example_shape'] or ())}")
    for split, v in info["splits"].items():
        e = v["examples_per_class"]
        groups = f", {v['groups']} groups" if v["groups"] else ""
        _out(
            f"  {split:5s} {v['classes']:6d} classes  {v['examples']:8d} examples  per class min {e['min']} / "
            f"median {e['median']:g} / max {e['max']}{groups}"
        )
    for split in info["empty_splits"]:
        _out(f"  {split:5s} declared but empty")
    pre = {k: v for k, v in info["preprocessing"].items() if k not in ("columns", "categories")}
    _out("preprocessing: " + json.dumps(pre, default=str))
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    if args.data_cmd == "list":
        root = args.data_root or os.environ.get("METAFIT_DATA")
        _out("sinusoid   built in (synthetic, MAML §5.1)")
        if root:
            found = [
                z for z in ("images_background.zip", "images_evaluation.zip") if (Path(root) / "omniglot" / z).exists()
            ]
            state = (
                f"found under {Path(root) / 'omniglot'}: {', '.join(found)}"
                if found
                else f"not found under {Path(root) / 'omniglot'}"
            )
        else:
            state = "data root not set (METAFIT_DATA / --data-root)"
        _out(f"omniglot   {state}")
        for name, sub in (("fashion-mnist", "fashion-mnist"), ("kuzushiji-kanji", "kuzushiji-kanji")):
            here = bool(root) and (Path(root) / sub).is_dir()
            _out(
                f"{name:<15s}{'found under ' + str(Path(root) / sub) if here else 'not found (data root / ' + sub + ')'}"
            )
        _out("digits         built in (scikit-learn's 8x8 digits; a test domain)")
        _out(
            "any path       image folder, .npz/.npy, .csv/.parquet table, Meta-Dataset source (metafit data info PATH)"
        )
        return 0
    root = _root(args)
    from metafit.data import omniglot as om

    if args.data_cmd == "verify":
        verify = getattr(om, "verify_omniglot", None) or getattr(om, "verify", None)
        if verify is None:
            raise ValueError("the Omniglot data layer has no verify function in this build")
        report = verify(root)
        _out(json.dumps(report, indent=1, default=str) if not isinstance(report, str) else report)
        return 0
    fetch = getattr(om, "fetch_omniglot", None) or getattr(om, "download_omniglot", None)
    if fetch is None:
        raise ValueError(
            "this metafit build has no Omniglot downloader; place images_background.zip and "
            f"images_evaluation.zip in {root / 'omniglot'}"
        )
    _out(str(fetch(root)))
    return 0


# -- parser ----------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of the ``metafit`` command."""
    p = argparse.ArgumentParser(
        prog="metafit", description="Functional meta-learning on PyTorch: train, evaluate, predict, plot."
    )
    p.add_argument("--debug", action="store_true", help="show full tracebacks instead of one-line errors")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details (resume, skipped checkpoints)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True, help="what to do")

    t = sub.add_parser(
        "train",
        help="meta-train a learner into a run folder",
        description="Meta-train. Settings come from CONFIG (JSON/YAML/TOML), then the flags, then --set.",
    )
    t.add_argument("config", nargs="?", help="config file (.json, .yaml, .toml); default: built-in defaults")
    t.add_argument(
        "--set",
        action="append",
        metavar="SECTION.KEY=VALUE",
        help="override one config field, e.g. --set train.steps=100 (repeatable)",
    )
    t.add_argument("--algo", choices=ALGORITHMS, help="learner (algo.name)")
    t.add_argument(
        "--dataset",
        help="sinusoid, a built-in dataset (omniglot, fashion-mnist, kuzushiji-kanji, digits) "
        "or a path: image folder, .npz/.npy, .csv/.parquet table, Meta-Dataset source (data.dataset)",
    )
    t.add_argument("--label-column", help="tables: the class column (data.label_column)")
    t.add_argument("--steps", type=int, help="meta-training steps (train.steps)")
    t.add_argument("--seed", type=int, help="random seed of model and task sampler (train.seed)")
    t.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        metavar="SEED",
        help="one run per seed, one after the other, each in its own folder (--run-dir gets -seed<S> appended); "
        "`metafit compare` groups them",
    )
    t.add_argument("--data-root", help="folder holding omniglot/images_*.zip (data.data_root; default $METAFIT_DATA)")
    t.add_argument(
        "--path",
        choices=PATHS,
        help="engine path (train.path; compile: torch.compile per-task loss; vmap_compile: of the vmapped batch loss; both opt-in)",
    )
    t.add_argument("--run-dir", help="output folder (default runs/<dataset>-<algo>-seed<seed>)")
    t.add_argument(
        "--resume", action="store_true", help="continue the run in --run-dir from its newest valid checkpoint"
    )
    t.add_argument(
        "--force", action="store_true", help="delete the outputs of a run already in --run-dir and start over"
    )
    t.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    t.add_argument(
        "--max-minutes", type=float, help="stop after this many minutes of training time (train.max_minutes)"
    )
    t.add_argument("--tensorboard", action="store_true", help="also write TensorBoard event files (train.tensorboard)")
    t.add_argument(
        "--nproc",
        type=int,
        default=1,
        help="processes on this machine, started by torch.distributed.run (torchrun): each meta-batch is "
        "sharded, gradients all-reduced; needs --path loop or vmap. Several machines: torchrun ... "
        "-m metafit train, see docs/distributed.md",
    )
    t.set_defaults(func=cmd_train)

    e = sub.add_parser(
        "eval",
        help="evaluate a trained run/checkpoint with 95%% confidence intervals",
        description="Evaluate on fixed seeded episodes; writes JSON and a Markdown table.",
    )
    e.add_argument("target", help="run folder, checkpoints folder or checkpoint file (step_*.json)")
    e.add_argument(
        "--k-shot", type=int, nargs="+", help="shots per class at evaluation (several values: accuracy vs shots)"
    )
    e.add_argument("--n-way", type=int, help="classes per episode (protonet only may change it)")
    e.add_argument("--n-query", type=int, help="query examples per class (per task for sinusoid)")
    e.add_argument("--episodes", type=int, help="number of evaluation episodes/tasks")
    e.add_argument("--inner-steps", type=int, help="inner adaptation steps (gradient-based learners)")
    e.add_argument("--inner-lr", type=float, help="inner step size (gradient-based learners)")
    e.add_argument("--seed", type=int, help="seed of the evaluation episodes (default: the config's eval_seed)")
    e.add_argument("--data-root", help="dataset folder if it moved since training")
    e.add_argument(
        "--dataset",
        help="evaluate on the test classes of another dataset (built-in name or path), "
        "converted to the checkpoint's input format (cross-domain)",
    )
    e.add_argument("--label-column", help="with a table --dataset: its class column")
    e.add_argument(
        "--recalibrate",
        choices=("nll", "quantile"),
        help="Gaussian learners (CNP): fit the predictive variance scale on validation tasks first",
    )
    e.add_argument(
        "--test-rotations",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Omniglot: test classes with (or, --no-test-rotations, without) the rotated copies of the test "
        "characters (default: as the run was configured)",
    )
    e.add_argument(
        "--protocol",
        choices=("standard", "within-alphabet"),
        default="standard",
        help="within-alphabet: Lake et al.'s Omniglot one-shot task (one evaluation alphabet per episode)",
    )
    e.add_argument("--inductive", action="store_true", help="batch statistics from the support set only")
    e.add_argument("--imbalanced-query", type=float, metavar="ALPHA", help="Dirichlet(ALPHA) class-imbalanced queries")
    e.add_argument("--calibration", action="store_true", help="NLL, Brier, ECE (through metafit compare's machinery)")
    e.add_argument("--out", help="output JSON (default <run>/eval_cli.json; a .md table is written next to it)")
    e.add_argument("--json", action="store_true", help="print the JSON instead of the Markdown table")
    e.set_defaults(func=cmd_eval)

    c = sub.add_parser(
        "compare",
        help="compare trained runs on the same fixed episodes (paired tests, seeds, calibration)",
        description="Evaluate every run on identical fixed episodes; print each run's mean ± 95%% CI, the "
        "class-bootstrap interval, calibration, the paired difference to the reference with a paired "
        "t-test and a Wilcoxon test (Holm-corrected), and one-line verdicts. Runs of one config with "
        "different train.seed are grouped: their seed spread decides.",
    )
    c.add_argument("runs", nargs="+", help="run folders (or checkpoints)")
    c.add_argument(
        "--setting", action="append", metavar="N_WAY:K_SHOT", help="test setting, repeatable (default: the first run's)"
    )
    c.add_argument(
        "--k-shot",
        type=int,
        nargs="+",
        metavar="K",
        help="regression runs (sinusoid, image completion): context points per task, one comparison each "
        "(Gaussian-process tasks draw their own)",
    )
    c.add_argument("--episodes", type=int, default=600, help="fixed episodes per setting (default 600)")
    c.add_argument(
        "--n-query", type=int, help="queries per class (default: the first run's evaluation queries; 1 within-alphabet)"
    )
    c.add_argument("--seed", type=int, default=2024, help="seed of the episodes, the same for every run")
    c.add_argument("--baseline", help="the reference run (its folder name; default: the best run)")
    c.add_argument(
        "--protocol",
        choices=("standard", "within-alphabet"),
        default="standard",
        help="within-alphabet: Lake et al.'s Omniglot one-shot task (one evaluation alphabet per episode, no rotations)",
    )
    c.add_argument(
        "--dataset", help="test on another dataset's test classes (cross-domain), converted to each run's format"
    )
    c.add_argument(
        "--imbalanced-query", type=float, metavar="ALPHA", help="class-imbalanced queries, Dirichlet(ALPHA) proportions"
    )
    c.add_argument(
        "--inductive", action="store_true", help="batch statistics from the support set only (default: transductive)"
    )
    c.add_argument(
        "--ensemble",
        type=int,
        default=1,
        metavar="M",
        help="score each run as an M-member ensemble over class and column permutations (TabPFN; no inner loop)",
    )
    c.add_argument(
        "--temperature-scale",
        action="store_true",
        help="also fit a temperature per run on its validation classes and report test calibration after scaling",
    )
    c.add_argument("--alpha", type=float, default=0.05, help="significance level of the verdicts")
    c.add_argument("--test", choices=("t", "wilcoxon"), default="t", help="the paired test the verdicts use")
    c.add_argument("--out", help="JSON file (a .md table is written next to it)")
    c.add_argument("--json", action="store_true", help="print the JSON instead of the tables")
    c.set_defaults(func=cmd_compare)

    pr = sub.add_parser(
        "predict",
        help="adapt on a folder of labelled images and classify new images",
        description="Adapt to SUPPORT (one sub-folder per class) and score the images in QUERY.",
    )
    pr.add_argument("checkpoint", help="run folder or checkpoint file of an image classifier")
    pr.add_argument(
        "--support",
        required=True,
        help="images: a folder with one sub-folder per class; tables: a CSV with the label column; arrays: .npz with x, y",
    )
    pr.add_argument("--query", required=True, help="images: a folder; tables: a CSV; arrays: .npz/.npy with x")
    pr.add_argument("--out", help="CSV file: file,predicted_class,score_<class>... (default: stdout)")
    pr.set_defaults(func=cmd_predict)

    fu = sub.add_parser(
        "fuse",
        help="meta-learn a fusion of trained Omniglot runs; compare with averaging, best-single, stacking",
        description="Meta-train a fusion (metafit.fusion.FusionLearner) of trained runs on episodes of the "
        "Omniglot val split and compare it with each base model, uniform averaging, best-single "
        "and stacking on fixed test episodes (mean ± 95% CI, paired differences). Writes "
        "fusion.json, fusion.md and the fusion head's checkpoint into --out-dir.",
    )
    fu.add_argument(
        "--base",
        action="append",
        metavar="RUN_OR_CHECKPOINT",
        help="a trained Omniglot run folder or checkpoint file (metafit train; protonet or a MAML-family "
        "classifier, whose features before the head are used); repeat for each base model (at least 1)",
    )
    fu.add_argument(
        "--data-root",
        help="folder holding omniglot/images_*.zip (default $METAFIT_DATA, then the first run's data.data_root)",
    )
    fu.add_argument("--n-way", type=int, default=5, help="classes per episode (default 5)")
    fu.add_argument("--k-shot", type=int, default=1, help="support examples per class (default 1)")
    fu.add_argument(
        "--n-query", type=int, default=5, help="query examples per class, training and test episodes (default 5)"
    )
    fu.add_argument("--steps", type=int, default=300, help="fusion meta-training steps (default 300)")
    fu.add_argument(
        "--train-tasks", type=int, default=300, help="size of the pool of fusion training tasks (default 300)"
    )
    fu.add_argument("--episodes", type=int, default=300, help="fixed test episodes (default 300)")
    fu.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the training tasks, the fusion's initialisation and the test episodes",
    )
    fu.add_argument("--out-dir", help="output folder (default runs/fuse-<n>way<k>shot-seed<seed>)")
    fu.add_argument("--force", action="store_true", help="overwrite the results of an earlier fusion in --out-dir")
    fu.add_argument("--json", action="store_true", help="print the JSON results instead of the Markdown table")
    fu.set_defaults(func=cmd_fuse)

    pl = sub.add_parser("plot", help="PNG plots of a run: learning curve, adaptation curve, per-task error")
    pl.add_argument("run_dir", help="run folder")
    pl.add_argument("--out", help="output folder (default <run>/plots)")
    pl.set_defaults(func=cmd_plot)

    rp = sub.add_parser("report", help="Markdown + HTML report comparing runs (95%% CIs, plots embedded)")
    rp.add_argument("run_dirs", nargs="*", help="run folders (their evaluations and plots)")
    rp.add_argument(
        "--compare",
        action="append",
        metavar="COMPARE_JSON",
        help="a `metafit compare --out` result: its tables, verdicts and reliability diagrams (repeatable)",
    )
    rp.add_argument("--out", default="report", help="output folder (default ./report)")
    rp.set_defaults(func=cmd_report)

    d = sub.add_parser("data", help="datasets: list, verify, fetch")
    dsub = d.add_subparsers(dest="data_cmd", metavar="ACTION", required=True, help="list, verify or fetch")
    di = dsub.add_parser("info", help="classes per split, examples per class, shapes and preprocessing of a dataset")
    di.add_argument(
        "dataset", help="a built-in name or a path (image folder, .npz/.npy, .csv/.parquet, Meta-Dataset source)"
    )
    di.add_argument("--data-root", help="data folder of the built-ins (default $METAFIT_DATA)")
    di.add_argument("--label-column", help="tables: the class column")
    di.add_argument(
        "--image-size", type=int, default=None, help="images: the side they are resized to (default: the source's)"
    )
    di.add_argument(
        "--channels", default="auto", choices=("auto", "1", "3"), help="image folders: grey (1), RGB (3) or auto"
    )
    di.add_argument("--json", action="store_true", help="print the JSON summary")
    di.set_defaults(func=cmd_data_info)
    for name, help_text in (
        ("list", "list datasets and whether they are present"),
        ("verify", "check the Omniglot zips (presence, integrity, class counts)"),
        ("fetch", "download Omniglot into the data root"),
    ):
        dp = dsub.add_parser(name, help=help_text)
        dp.add_argument("--data-root", help="data folder (default $METAFIT_DATA)")
        dp.set_defaults(func=cmd_data)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``metafit`` / ``python -m metafit``; returns the exit status."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(args.func(args) or 0)
    except RunError as e:
        if args.debug:
            raise
        _err(str(e))
        return EXIT_FAILED
    except (
        ValueError,
        FileNotFoundError,
        NotADirectoryError,
        IsADirectoryError,
        PermissionError,
        TypeError,
        ImportError,
    ) as e:
        if args.debug:
            raise
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        _err(msg)
        return EXIT_USAGE
    except KeyboardInterrupt:
        _err("interrupted")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
