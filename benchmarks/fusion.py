"""Model fusion on Omniglot: a meta-learned fusion of ProtoNets vs averaging, best-single, stacking.

Protocol (full, recorded in the JSON):

* Data: Omniglot (Lake et al. 2015), images 28x28 (the data layer's preprocessing: inverted,
  strokes = 1, PIL bilinear resize), no rotations.
  Background split, 30 alphabets sorted by name: alphabets 4, 9, 14, ... (every 5th, 6 of them)
  are kept for meta-training the fusion; the other 24 are split round-robin into M = 4 disjoint
  groups of 6, one per base model. Test: the 20 evaluation alphabets, unseen by every base model
  and by the fusion.
* Base models: Conv-4 ProtoNet embeddings (width 32, max-pool, TaskBatchNorm), one per group and
  seed (model ``i``: group ``i``, seed ``--seed + 10 i``), each trained for ``--base-minutes`` of
  wall time (or ``--base-steps``, whichever ends first) on 20-way 1-shot 5-query episodes of its
  own alphabets, Adam 1e-3, one episode per step. Both flags take one number (the same budget for
  all M models) or M numbers (one per model, in group order); a budget of 0 leaves that model
  UNTRAINED (its random initialisation, frozen).
* Scenarios (``--scenario``, recorded in the JSON with each model's budget, steps and seconds):

  - ``homogeneous`` (default): every model gets the same budget, ``--base-minutes 1``: four
    near-identical models of similar quality (the setting of ``results/fusion.json``, where
    uniform averaging is already near-optimal).
  - ``heterogeneous``: the realistic use of a fusion, base models of unknown and unequal
    quality. Budgets 2, 0.5, 0.1 and 0 minutes (``HETEROGENEOUS_MINUTES``): a well-trained, a
    medium, a barely trained model and one UNTRAINED Conv-4 (random weights, 0 steps; a
    stand-in for a broken or stale member). Everything else (groups, fusion alphabets, test
    alphabets, fusion and evaluation settings) is the homogeneous protocol's. The strongest
    model is model 0, which is also the one best-single's ties fall on (conservative for the
    fusion). Wall-time budgets give fewer steps on a loaded machine; the steps are recorded,
    and ``--base-steps 840 210 42 0 --base-minutes 100`` is a load-independent equivalent (the
    steps those minutes give at the 7-8 steps/s of the run in ``results/fusion.json``).

  An explicit ``--base-minutes`` / ``--base-steps`` overrides the scenario's preset (recorded as
  ``base_budgets.source``); the scenario must still describe the budgets (``homogeneous``: the
  same minutes and step cap for every model, ``heterogeneous``: not), so the JSON's label is true.
* Fusion: :class:`metafit.fusion.FusionLearner` (1 inner step, attention on support statistics,
  normalised logits) meta-trained with the engine (vmap path) on ``--fusion-tasks`` cached
  embedded 5-way K-shot tasks (``--fusion-query`` queries per class) of the 6 fusion alphabets,
  meta-batch 16, Adam 1e-2, ``--fusion-steps`` steps; one fusion per K.
* Baselines, on the same test episodes: each base model alone, uniform averaging of the M
  models' ProtoNet probabilities, best single model chosen on the support set (LOO accuracy,
  ties / K = 1 by support cross-entropy), stacking (scikit-learn StackingClassifier contract:
  L2 multinomial logistic regression, C = 1, on the models' LOO support probabilities; K = 1:
  in-sample, cross-validation impossible) and class-symmetric stacking.
* Evaluation: ``--eval-tasks`` fixed 5-way episodes (``--eval-query`` per class) of the evaluation
  alphabets per K = 1, 5; accuracy mean ± 95% CI over episodes, and the paired difference
  (fusion - baseline) ± 95% CI over the same episodes.

Data: the library data layer (:mod:`metafit.data.omniglot`: ``load_omniglot``, decoded once and
cached in ``--cache-dir``; ``omniglot_alphabets`` for the alphabet groups; the Lake ``"test"``
split = the evaluation alphabets) and its samplers (``EpisodeSampler``, ``fixed_episodes``).
The fusion's meta-training and the comparison are :func:`metafit.fusion.meta_train_fusion` and
:func:`metafit.fusion.compare_fusion`, what ``metafit fuse`` runs on trained run folders.

``--quick`` keeps the scenario's shape (the same untrained members, the others 0.1 minutes and a
step cap of 10 scaled by the model's share of the largest budget) and shrinks everything else.

Usage:
    python benchmarks/fusion.py --out results/fusion.json
    python benchmarks/fusion.py --scenario heterogeneous --out results/fusion_heterogeneous.json
    python benchmarks/fusion.py --scenario heterogeneous --base-minutes 4 1 0.2 0   # own budgets
    python benchmarks/fusion.py --quick [--scenario heterogeneous]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _common import markdown_table, parser, setup_threads, write_out  # noqa: E402

from metafit import ProtoNet, Trainer, generator, seeded, summarize  # noqa: E402
from metafit.app.fuse import fusion_markdown  # noqa: E402
from metafit.callbacks import TimeBudget  # noqa: E402
from metafit.data.datasets import LabelledDataset  # noqa: E402
from metafit.data.omniglot import alphabet_names, load_omniglot, omniglot_alphabets, omniglot_split  # noqa: E402
from metafit.data.sampling import EpisodeSampler, fixed_episodes  # noqa: E402
from metafit.fusion import FusionLearner, compare_fusion, embed_task, meta_train_fusion  # noqa: E402
from metafit.models import Conv4  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
M = 4
#: --scenario presets: base-model training budgets in minutes of wall time, one per model.
HOMOGENEOUS_MINUTES = (1.0,) * M
HETEROGENEOUS_MINUTES = (2.0, 0.5, 0.1, 0.0)  # well trained, medium, barely trained, untrained
SCENARIOS = {"homogeneous": HOMOGENEOUS_MINUTES, "heterogeneous": HETEROGENEOUS_MINUTES}
DEFAULT_BASE_STEPS = 100_000


def train_base(dataset: LabelledDataset, seed: int, minutes: float, max_steps: int) -> tuple[torch.nn.Module, dict]:
    """A Conv-4 ProtoNet trained on 20-way 1-shot 5-query episodes of ``dataset``, frozen."""
    model = seeded(seed, lambda: Conv4(1, None, width=32))
    algo = ProtoNet()
    trainer = Trainer(algo, model, optimizer=lambda p: torch.optim.Adam(p, lr=1e-3), path="loop")
    sampler = EpisodeSampler(dataset, 20, 1, 5, tasks_per_batch=1, generator=generator(seed + 7))
    t0 = time.perf_counter()
    # the one training loop; the wall-time budget is the product's TimeBudget callback
    budget = [TimeBudget(minutes * 60)] if minutes > 0 else []
    results = trainer.fit(sampler, max_steps, callbacks=budget) if minutes > 0 else []
    accs = [r.metrics["accuracy"] for r in results]
    steps = trainer.step_count
    if steps:  # 0 steps: the model keeps its seeded random initialisation (an untrained member)
        assert trainer.meta_params is not None
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(trainer.meta_params["model"][name])
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    last = accs[-100:]
    return model, {
        "steps": steps,
        "seconds": time.perf_counter() - t0,
        "train_acc_last100": sum(last) / len(last) if last else None,
    }


def per_model(p: argparse.ArgumentParser, flag: str, values: list | None, kind: type) -> list | None:
    """One value per base model from a flag given 1 or M values (>= 0); None if not given."""
    if values is None:
        return None
    if len(values) not in (1, M):
        p.error(f"{flag}: expected 1 or {M} values (one per base model), got {len(values)}")
    if any(v < 0 or (isinstance(v, float) and not math.isfinite(v)) for v in values):
        p.error(f"{flag}: budgets must be finite and >= 0, got {values}")
    return [kind(v) for v in values] * (M if len(values) == 1 else 1)


def budget_label(minutes: float, cap: int, steps: int) -> str:
    if steps == 0:
        return "untrained"
    cap_s = "" if cap == DEFAULT_BASE_STEPS else f", cap {cap}"
    return f"{minutes:g} min{cap_s}, {steps} step{'' if steps == 1 else 's'}"


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="where the data layer caches the decoded images (default $METAFIT_CACHE/omniglot or ~/.cache/metafit/omniglot)",
    )
    p.add_argument(
        "--scenario",
        choices=sorted(SCENARIOS),
        default="homogeneous",
        help="base-model budget preset: homogeneous (1 min each) or heterogeneous "
        "(2, 0.5, 0.1 min and one untrained model); see the module docstring",
    )
    p.add_argument(
        "--base-minutes",
        type=float,
        nargs="+",
        default=None,
        metavar="MIN",
        help=f"wall-time budget per base model: one number (all models) or {M} (one per model); "
        "0 = untrained. Default: the scenario's preset",
    )
    p.add_argument(
        "--base-steps",
        type=int,
        nargs="+",
        default=None,
        metavar="STEPS",
        help=f"step cap per base model: one number or {M}; 0 = untrained (default {DEFAULT_BASE_STEPS})",
    )
    p.add_argument("--fusion-tasks", type=int, default=300)
    p.add_argument("--fusion-query", type=int, default=5, help="queries per class of fusion training tasks")
    p.add_argument("--fusion-steps", type=int, default=300)
    p.add_argument("--eval-tasks", type=int, default=300)
    p.add_argument("--eval-query", type=int, default=10, help="queries per class of test episodes")
    args = p.parse_args()
    setup_threads(args.threads, args.keep_freed_memory)
    minutes = per_model(p, "--base-minutes", args.base_minutes, float)
    caps = per_model(p, "--base-steps", args.base_steps, int)
    source = "preset" if minutes is None and caps is None else "flags"
    if minutes is None:
        minutes = list(SCENARIOS[args.scenario])
    if caps is None:
        caps = [DEFAULT_BASE_STEPS] * M
    equal = len(set(zip(minutes, caps))) == 1
    if equal != (args.scenario == "homogeneous"):
        p.error(
            f"--scenario {args.scenario}: base budgets {minutes} min, step caps {caps} are "
            f"{'equal' if equal else 'unequal'}; use --scenario {'homogeneous' if equal else 'heterogeneous'}"
        )
    if args.quick:  # same shape (untrained members stay untrained), tiny budgets
        top = max(minutes) or 1.0
        caps = [0 if m == 0 or c == 0 else min(c, max(1, math.ceil(10 * m / top))) for m, c in zip(minutes, caps)]
        minutes = [0.0 if m == 0 else 0.1 for m in minutes]
        args.fusion_tasks, args.fusion_steps, args.eval_tasks = 16, 10, 20
    # the protocol record keeps the historical scalar form when every model has the same budget
    args.base_minutes = minutes[0] if len(set(minutes)) == 1 else minutes
    args.base_steps = caps[0] if len(set(caps)) == 1 else caps
    t_all = time.perf_counter()
    t0 = time.perf_counter()
    data = load_omniglot(args.data_root, image_size=28, cache_dir=args.cache_dir)
    load_s = time.perf_counter() - t0
    names = list(alphabet_names(data, "background"))
    fusion_alpha = names[4::5]
    rest = [a for a in names if a not in fusion_alpha]
    groups = [rest[i::M] for i in range(M)]
    test_ds = omniglot_split(data, "test", protocol="lake", rotations=False)  # the 20 evaluation alphabets
    fusion_ds = omniglot_alphabets(data, fusion_alpha)

    print(f"scenario {args.scenario}: base budgets {minutes} min, step caps {caps} ({source})", flush=True)
    bases, base_info = [], []
    for i, grp in enumerate(groups):
        model, info = train_base(omniglot_alphabets(data, grp), args.seed + 10 * i, minutes[i], caps[i])
        bases.append(model)
        base_info.append(
            {
                "alphabets": grp,
                "budget_minutes": minutes[i],
                "max_steps": caps[i],
                "seed": args.seed + 10 * i,
                "untrained": info["steps"] == 0,
                **info,
            }
        )
        acc = info["train_acc_last100"]
        print(
            f"base model {i}: {budget_label(minutes[i], caps[i], info['steps'])} in {info['seconds']:.0f} s, "
            f"train acc (last 100, 20-way 1-shot) {'-' if acc is None else f'{acc:.3f}'}",
            flush=True,
        )
    labels = {
        f"base model {i}": f"base model {i} ({budget_label(minutes[i], caps[i], b['steps'])})"
        for i, b in enumerate(base_info)
    }

    results: dict = {
        "protocol": {k: str(v) for k, v in vars(args).items()},
        "scenario": args.scenario,
        "base_budgets": {"minutes": minutes, "max_steps": caps, "source": source},
        "data_load_seconds": load_s,
        "fusion_alphabets": fusion_alpha,
        "base_models": base_info,
        "eval": {},
    }
    tables = []
    for k in (1, 5):
        t0 = time.perf_counter()
        pool = EpisodeSampler(
            fusion_ds,
            5,
            k,
            args.fusion_query,
            tasks_per_batch=args.fusion_tasks,
            generator=generator(args.seed + 1000 + k),
        ).sample_batch()
        train_tasks = [embed_task(bases, t) for t in pool]
        algo = FusionLearner(inner_steps=1)
        head, mp, _ = meta_train_fusion(
            train_tasks,
            M,
            steps=args.fusion_steps,
            generator=generator(args.seed + 2000 + k),
            tasks_per_batch=16,
            lr=1e-2,
            learner=algo,
            seed=args.seed + k,
            path="vmap",
        )
        fusion_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        # fixed test episodes, the same for every method
        episodes = fixed_episodes(test_ds, 5, k, args.eval_query, args.eval_tasks, seed=args.seed + 5000 + k)
        test = [embed_task(bases, t) for t in episodes]
        cmp = compare_fusion(algo, head, mp, test)
        chosen = cmp.best_single_choice
        eval_s = time.perf_counter() - t0
        nll = summarize(cmp.fusion_nll)
        out = cmp.summary()  # mean ± 95% CI per method, paired difference to the fusion
        w = mp["model"]["log_scale"].detach()
        results["eval"][k] = {
            "accuracy": out,
            "fusion_train_seconds": fusion_s,
            "eval_seconds": eval_s,
            "n_tasks": len(test),
            "learned_log_scale": w.tolist(),
            "learned_inner_lr": float(mp["model"]["log_inner_lr"].detach().exp()),
            "best_single_choice_counts": torch.bincount(torch.tensor(chosen), minlength=M).tolist(),
            "fusion_nll": {"mean": nll.mean, "ci95": nll.ci95},
        }
        # display only: the base-model rows name their budget (JSON keys stay "base model i")
        tables.append((k, fusion_markdown({labels.get(n, n): v for n, v in out.items()})))
        print(f"K={k}: fusion meta-training {fusion_s:.0f} s, evaluation {eval_s:.0f} s", flush=True)
    results["total_seconds"] = time.perf_counter() - t_all
    print(f"\nscenario: {args.scenario} (base budgets: {source})\n")
    print(
        markdown_table(
            ["base model", "alphabets", "budget (min)", "step cap", "steps", "seconds", "train acc (last 100, 20w1s)"],
            [
                [
                    i,
                    ", ".join(b["alphabets"]),
                    f"{b['budget_minutes']:g}",
                    b["max_steps"],
                    b["steps"] or "0 (untrained)",
                    f"{b['seconds']:.0f}",
                    "-" if b["train_acc_last100"] is None else f"{b['train_acc_last100']:.3f}",
                ]
                for i, b in enumerate(base_info)
            ],
        )
    )
    for k, table in tables:
        print(
            f"\n5-way {k}-shot, {args.eval_tasks} test episodes ({args.eval_query} queries/class) of the evaluation alphabets\n"
        )
        print(table, end="")
    print(f"\ntotal {results['total_seconds']:.0f} s (data load {load_s:.0f} s)")
    write_out(args.out, {"benchmark": "fusion_omniglot", "quick": args.quick, **results})


if __name__ == "__main__":
    main()
