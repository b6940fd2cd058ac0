"""Model fusion on Omniglot: a meta-learned fusion of ProtoNets vs averaging, best-single, stacking.

Protocol (full, recorded in the JSON):

* Data: Omniglot (Lake et al. 2015), images 28x28 (inverted, strokes = 1), no rotations.
  Background split, 30 alphabets sorted by name: alphabets 4, 9, 14, ... (every 5th, 6 of them)
  are kept for meta-training the fusion; the other 24 are split round-robin into M = 4 disjoint
  groups of 6, one per base model. Test: the 20 evaluation alphabets, unseen by every base model
  and by the fusion.
* Base models: Conv-4 ProtoNet embeddings (width 32, max-pool, TaskBatchNorm), one per group and
  seed, each trained for ``--base-minutes`` of wall time (or ``--base-steps``) on 20-way 1-shot
  5-query episodes of its own alphabets, Adam 1e-3, one episode per step.
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

Data: read here directly from the two zips (the metafit.data Omniglot layer was not available yet
when this was written), cached as uint8 tensors in --cache.

Usage:
    python benchmarks/fusion.py --out results/fusion.json
    python benchmarks/fusion.py --quick
"""

from __future__ import annotations

import io
import sys
import time
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from _common import markdown_table, parser, setup_threads, write_out  # noqa: E402
from metafit import ProtoNet, Trainer, evaluate, generator, seeded, summarize  # noqa: E402
from metafit.data.task import Task, stack_tasks  # noqa: E402
from metafit.fusion import (  # noqa: E402
    FusionHead,
    FusionLearner,
    best_single,
    embed_task,
    model_logits,
    stacking,
    uniform_average,
)
from metafit.models import Conv4  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
M = 4


def load_split(root: Path, split: str, cache: Path | None) -> dict[str, torch.Tensor]:
    """``{alphabet: uint8 (n_chars, 20, 28, 28)}`` read from ``images_<split>.zip``."""
    if cache is not None and cache.exists():
        return torch.load(cache)
    from PIL import Image

    zp = root / "omniglot" / f"images_{split}.zip"
    chars: dict[tuple[str, str], list[torch.Tensor]] = {}
    with zipfile.ZipFile(zp) as z:
        for name in sorted(z.namelist()):
            if not name.endswith(".png"):
                continue
            _, alphabet, character, _ = name.split("/")
            img = Image.open(io.BytesIO(z.read(name))).convert("L").resize((28, 28), Image.LANCZOS)
            t = 255 - torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(28, 28)
            chars.setdefault((alphabet, character), []).append(t)
    out: dict[str, list[torch.Tensor]] = {}
    for (alphabet, _), imgs in sorted(chars.items()):
        out.setdefault(alphabet, []).append(torch.stack(imgs))
    data = {a: torch.stack(v) for a, v in out.items()}
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save(data, cache)
    return data


def pool(data: dict[str, torch.Tensor], alphabets: list[str]) -> torch.Tensor:
    """float (n_chars, 20, 1, 28, 28) in [0, 1] of the given alphabets."""
    return torch.cat([data[a] for a in alphabets]).float().div(255.0).unsqueeze(2)


def episode(images: torch.Tensor, n_way: int, k: int, q: int, g: torch.Generator) -> Task:
    chars = torch.randperm(images.shape[0], generator=g)[:n_way]
    sx, qx = [], []
    for c in chars:
        idx = torch.randperm(images.shape[1], generator=g)[: k + q]
        sel = images[c, idx]
        sx.append(sel[:k])
        qx.append(sel[k:])
    sy = torch.arange(n_way).repeat_interleave(k)
    qy = torch.arange(n_way).repeat_interleave(q)
    return Task(torch.cat(sx), sy, torch.cat(qx), qy, n_way=n_way)


def train_base(images: torch.Tensor, seed: int, minutes: float, max_steps: int) -> tuple[torch.nn.Module, dict]:
    model = seeded(seed, lambda: Conv4(1, None, width=32))
    algo = ProtoNet()
    trainer = Trainer(algo, model, optimizer=lambda p: torch.optim.Adam(p, lr=1e-3), path="loop")
    g = generator(seed + 7)
    t0 = time.perf_counter()
    steps, accs = 0, []
    while steps < max_steps and time.perf_counter() - t0 < minutes * 60:
        r = trainer.step([episode(images, 20, 1, 5, g)])
        accs.append(r.metrics["accuracy"])
        steps += 1
    assert trainer.meta_params is not None
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(trainer.meta_params["model"][name])
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    last = accs[-100:]
    return model, {"steps": steps, "seconds": time.perf_counter() - t0, "train_acc_last100": sum(last) / max(len(last), 1)}


def acc(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float((logits.argmax(-1) == y).double().mean())


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--cache", type=Path, default=Path("/tmp/metafit_omniglot28.pt"))
    p.add_argument("--base-minutes", type=float, default=1.0)
    p.add_argument("--base-steps", type=int, default=100_000)
    p.add_argument("--fusion-tasks", type=int, default=300)
    p.add_argument("--fusion-query", type=int, default=5, help="queries per class of fusion training tasks")
    p.add_argument("--fusion-steps", type=int, default=300)
    p.add_argument("--eval-tasks", type=int, default=300)
    p.add_argument("--eval-query", type=int, default=10, help="queries per class of test episodes")
    args = p.parse_args()
    setup_threads(args.threads)
    if args.quick:
        args.base_minutes, args.base_steps, args.fusion_tasks, args.fusion_steps, args.eval_tasks = 0.1, 10, 16, 10, 20
    t_all = time.perf_counter()
    t0 = time.perf_counter()
    bg = load_split(args.data_root, "background", args.cache.with_name(args.cache.stem + "_bg.pt"))
    ev = load_split(args.data_root, "evaluation", args.cache.with_name(args.cache.stem + "_ev.pt"))
    load_s = time.perf_counter() - t0
    names = sorted(bg)
    fusion_alpha = names[4::5]
    rest = [a for a in names if a not in fusion_alpha]
    groups = [rest[i::M] for i in range(M)]
    test_images = pool(ev, sorted(ev))
    fusion_images = pool(bg, fusion_alpha)

    bases, base_info = [], []
    for i, grp in enumerate(groups):
        model, info = train_base(pool(bg, grp), args.seed + 10 * i, args.base_minutes, args.base_steps)
        bases.append(model)
        base_info.append({"alphabets": grp, **info})
        print(f"base model {i}: {info['steps']} steps in {info['seconds']:.0f} s, "
              f"train acc (last 100, 20-way 1-shot) {info['train_acc_last100']:.3f}", flush=True)

    results: dict = {"protocol": {k: str(v) for k, v in vars(args).items()}, "data_load_seconds": load_s,
                     "fusion_alphabets": fusion_alpha, "base_models": base_info, "eval": {}}
    tables = []
    for k in (1, 5):
        t0 = time.perf_counter()
        g = generator(args.seed + 1000 + k)
        train_tasks = [embed_task(bases, episode(fusion_images, 5, k, args.fusion_query, g)) for _ in range(args.fusion_tasks)]
        head = FusionHead(M)
        algo = FusionLearner(inner_steps=1)
        trainer = Trainer(algo, head, optimizer=lambda p: torch.optim.Adam(p, lr=1e-2), path="vmap")
        gb = generator(args.seed + 2000 + k)
        for _ in range(args.fusion_steps):
            idx = torch.randperm(len(train_tasks), generator=gb)[:16]
            trainer.step(stack_tasks([train_tasks[int(j)] for j in idx]))
        assert trainer.meta_params is not None
        mp = trainer.meta_params
        fusion_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        ge = generator(args.seed + 5000 + k)  # fixed test episodes, the same for every method
        test = [embed_task(bases, episode(test_images, 5, k, args.eval_query, ge)) for _ in range(args.eval_tasks)]
        per: dict[str, list[float]] = {}
        r = evaluate(algo, head, mp, test)
        per["fusion (meta-learned)"] = r.per_task["accuracy"]
        chosen = []
        for t in test:
            logits = model_logits(t.support_x, t.support_y, t.query_x, 5)
            for m in range(M):
                per.setdefault(f"base model {m}", []).append(acc(logits[m], t.query_y))
            per.setdefault("uniform average", []).append(acc(uniform_average(t), t.query_y))
            bl, b = best_single(t)
            chosen.append(b)
            per.setdefault("best single (support)", []).append(acc(bl, t.query_y))
            per.setdefault("stacking (LR, sklearn contract)", []).append(acc(stacking(t), t.query_y))
            per.setdefault("stacking (class-symmetric LR)", []).append(acc(stacking(t, symmetric=True), t.query_y))
        eval_s = time.perf_counter() - t0
        fus = torch.tensor(per["fusion (meta-learned)"], dtype=torch.float64)
        rows, out = [], {}
        for name, v in per.items():
            s = summarize(v)
            d = summarize(fus - torch.tensor(v, dtype=torch.float64)) if not name.startswith("fusion") else None
            out[name] = {"mean": s.mean, "ci95": s.ci95, "diff_vs_fusion": None if d is None else {"mean": d.mean, "ci95": d.ci95}}
            rows.append([name, f"{100 * s.mean:.2f} ± {100 * s.ci95:.2f}",
                         "—" if d is None else f"{100 * d.mean:+.2f} ± {100 * d.ci95:.2f}"])
        w = mp["model"]["log_scale"].detach()
        results["eval"][k] = {
            "accuracy": out, "fusion_train_seconds": fusion_s, "eval_seconds": eval_s, "n_tasks": len(test),
            "learned_log_scale": w.tolist(), "learned_inner_lr": float(mp["model"]["log_inner_lr"].detach().exp()),
            "best_single_choice_counts": torch.bincount(torch.tensor(chosen), minlength=M).tolist(),
            "fusion_nll": {"mean": r.metrics["nll"].mean, "ci95": r.metrics["nll"].ci95},
        }
        tables.append((k, rows, fusion_s, eval_s))
        print(f"K={k}: fusion meta-training {fusion_s:.0f} s, evaluation {eval_s:.0f} s", flush=True)
    results["total_seconds"] = time.perf_counter() - t_all
    for k, rows, fs, es in tables:
        print(f"\n5-way {k}-shot, {args.eval_tasks} test episodes ({args.eval_query} queries/class) of the evaluation alphabets (accuracy %)\n")
        print(markdown_table(["method", "accuracy ± 95% CI", "fusion − method (paired) ± 95% CI"], rows))
    print(f"\ntotal {results['total_seconds']:.0f} s (data load {load_s:.0f} s)")
    write_out(args.out, {"benchmark": "fusion_omniglot", "quick": args.quick, **results})


if __name__ == "__main__":
    main()
