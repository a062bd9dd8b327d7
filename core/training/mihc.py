"""Train S-DRDIN (and its DRDIN variants) on synthetic mIHC sections; write its model card.

Usage (each stage about 40 minutes on 2 CPU cores; ``--device cuda --workers 8`` on a GPU)::

    python -m core.training.mihc train --variant s-drdin --base 16 --minutes 40 --seed 1 \
        --out runs/mihc/mihc-tcell-phenotypes-sdrdin-v1.stage1.safetensors
    python -m core.training.mihc train --variant s-drdin --base 16 --minutes 40 --seed 2 \
        --init runs/mihc/mihc-tcell-phenotypes-sdrdin-v1.stage1.safetensors \
        --out weights/mihc-tcell-phenotypes-sdrdin-v1.safetensors
    python -m core.training.mihc card --weights weights/mihc-tcell-phenotypes-sdrdin-v1.safetensors \
        --train weights/mihc-tcell-phenotypes-sdrdin-v1.train.json \
        --earlier runs/mihc/mihc-tcell-phenotypes-sdrdin-v1.stage1.train.json --evaluation runs/mihc-eval.json

Method (S-DRDIN paper §2.2-2.4): the generator's mIHC recipe (:mod:`core.generator.mihc`) draws
fresh sections; a disk around each T cell's centre is its class in the class map (6 phenotypes
+ background) and the detection map is their channel-wise maximum (§2.2); flips (and
transposes) as augmentation; pixel-weighted cross-entropy of eq. 1-2 (weights recomputed per
batch, so the rare PD1+CD4-CD8- and PD1+CD4+CD8- pixels count as much as the common ones) plus
the binary cross-entropy of detection (§2.4, :func:`core.training.sdrdin.sdrdin_loss`); Adam at
1e-3, Glorot-uniform initialisation (§2.3); batch 4 (§2.3) of 224 x 224 px sections (§2.2).

Data and seeds. Training sections are drawn with seeds ``TRAIN_SEED_BASE + 10 000 000 * seed +
k`` (k = 0, 1, ...: a run never sees a section twice, and stages with different ``--seed`` never
share one); a pool of ``--pool`` sections is kept and ``--fresh`` of them replaced by new ones
after every step (``--workers`` processes generate ahead of the training). Tuning sections are
seeds 5000 + i, i < ``--tune-sections``; evaluation (``python -m core evaluate``) uses seeds >=
10 000, which training never touches (:mod:`core.evaluation.mihc`).

The pre-registered selection rule (:data:`SELECTION_RULE`) is printed before training starts
and stored in the training record.

Departures from the paper (stated in the card): synthetic sections instead of 180 annotated
patches; a time budget instead of 100 epochs, with a 50-step warm-up and cosine decay of the
learning rate over it; disk radius 2.2 µm (5 px) instead of 2 px, as for ``he-til`` (§2.5 drops
components under 50 px, more than a 2 px disk's 13 px); reduced width (``--base``) for CPU
inference; checkpoint, threshold and class window (eq. 3) chosen on separate tuning seeds.
"""

from __future__ import annotations

import argparse
import json
from collections import deque
from pathlib import Path

import numpy as np
import torch

from core.evaluation.mihc import TRAIN_SEED_BASE, TUNE_SEEDS, score_model, selection_score
from core.generator.mihc import MIHC_MPP, PHENOTYPES
from core.training.sdrdin import random_dihedral

#: Disk radius of the training targets, µm (5 px at 0.44 µm/px).
RADIUS_UM = 2.2
#: Seeds of one ``--seed`` stream: TRAIN_SEED_BASE + STREAM_SEEDS * seed + k.
STREAM_SEEDS = 10_000_000
#: Class windows of eq. 3 tried at the end on the tune sections, µm: the paper's 49 px at 0.44 µm/px first, then 25 and 15 px.
CLASS_WINDOWS_UM = (21.56, 11.0, 6.6)
#: Thresholds of the final sweep on the tune sections.
SWEEP_THRESHOLDS = tuple(float(t) for t in np.round(np.arange(0.20, 0.901, 0.05), 3))
#: The rule that picks the checkpoint and the threshold, fixed before any training (printed and recorded).
SELECTION_RULE = (
    "Pre-registered selection rule: every --eval-minutes (and at the end) the network is scored on the tune sections "
    f"(generator seeds {TUNE_SEEDS[0]} to {TUNE_SEEDS[0]} + --tune-sections - 1) at each of --eval-thresholds; the "
    "checkpoint kept is the one with the highest detection F1 + weighted class F1 (detection F1 alone for "
    "drdin-detection) at its best threshold (matching within 4.4 µm, S-DRDIN §2.5). Then the detection threshold is "
    "chosen on the same tune sections from 0.20 to 0.90 in steps of 0.05 for the highest detection F1 (ties: the "
    "nearest to 0.5), with the paper's class window of 49 px (21.56 µm); at that threshold the class window of eq. 3 "
    "is chosen from 21.56, 11.0 and 6.6 µm for the highest weighted class F1 (ties: the larger). Evaluation seeds "
    "(10000 to 999999) are never generated during training or tuning."
)


def example(seed: int, size_px: int, radius_px: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One training example: a fresh section and its §2.2 targets.

    Parameters
    ----------
    seed : generator seed
    size_px : side of the section, px at 0.44 µm/px (multiple of 8)
    radius_px : disk radius of the targets

    Returns
    -------
    image : (S, S, 3) uint8 RGB
    class_target : (S, S) int64 in [0, 6]: phenotype index inside a T cell's disk, 6 (background) elsewhere
    detection_target : (S, S) float32 in {0, 1}
    """
    from core.evaluation.datasets_he import disk_targets
    from core.generator.mihc import generate_mihc

    s = generate_mihc((size_px, size_px), int(seed))
    cls, det = disk_targets(s.image.shape[:2], s.points_xy, s.labels, radius_px, n_classes=len(PHENOTYPES))
    return s.image, cls, det


def _example_args(args: tuple) -> tuple:
    return example(*args)


class SectionStream:
    """Fresh training examples in seed order, generated ahead by worker processes (or in-line with 0 workers).

    Parameters
    ----------
    first_seed : int, seed of the first section
    size_px, radius_px : see :func:`example`
    workers : int >= 0, generator processes (0: generate in the training process)
    """

    def __init__(self, first_seed: int, size_px: int, radius_px: float, workers: int = 0):
        self.next_seed = int(first_seed)
        self.size_px, self.radius_px = int(size_px), float(radius_px)
        self.pending: deque = deque()
        self.executor = None
        if workers > 0:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            self.executor = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"))
            self.ahead = 4 * workers

    def _submit(self) -> None:
        args = (self.next_seed, self.size_px, self.radius_px)
        self.pending.append(self.executor.submit(_example_args, args))
        self.next_seed += 1

    def take(self, n: int) -> list[tuple]:
        """The next ``n`` examples (seed order, so a run is reproducible whatever the worker count)."""
        if self.executor is None:
            out = [example(self.next_seed + i, self.size_px, self.radius_px) for i in range(n)]
            self.next_seed += n
            return out
        while len(self.pending) < n + self.ahead:
            self._submit()
        return [self.pending.popleft().result() for _ in range(n)]

    @property
    def seeds_used(self) -> int:
        return self.next_seed - len(self.pending)

    def close(self) -> None:
        if self.executor is not None:
            for f in self.pending:
                f.cancel()
            self.executor.shutdown(wait=False, cancel_futures=True)


class SectionPool:
    """A pool of training examples, refreshed with fresh sections; batches with random dihedral transforms.

    Parameters
    ----------
    stream : SectionStream
    size : int, examples in the pool
    gen : torch.Generator (reproducible batches)
    """

    def __init__(self, stream: SectionStream, size: int, gen: torch.Generator):
        self.stream, self.gen = stream, gen
        self.items = [self._tensors(e) for e in stream.take(size)]
        self.oldest = 0

    @staticmethod
    def _tensors(e: tuple) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        img, cls, det = e
        return (torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float() / 255.0,
                torch.from_numpy(cls), torch.from_numpy(det))

    def refresh(self, n: int) -> None:
        """Replace the ``n`` oldest examples by fresh sections."""
        for e in self.stream.take(n):
            self.items[self.oldest] = self._tensors(e)
            self.oldest = (self.oldest + 1) % len(self.items)

    def mean_std(self) -> tuple[np.ndarray, np.ndarray]:
        """(3,) float32 mean and standard deviation of the pool's RGB in [0, 1] (the input normalisation)."""
        x = torch.stack([i[0] for i in self.items]).permute(1, 0, 2, 3).reshape(3, -1)
        return x.mean(1).numpy().astype(np.float32), x.std(1).numpy().astype(np.float32)

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(n, 3, S, S) float RGB in [0, 1], (n, S, S) int64 class target, (n, S, S) float32 detection target.

        Flips (§2.2) and transposes: the 8 dihedral transforms.
        """
        xs, cs, ds = [], [], []
        for _ in range(n):
            parts = random_dihedral(list(self.items[int(torch.randint(len(self.items), (1,), generator=self.gen))]),
                                    self.gen)
            xs.append(parts[0])
            cs.append(parts[1])
            ds.append(parts[2])
        return torch.stack(xs).contiguous(), torch.stack(cs).contiguous(), torch.stack(ds).contiguous()


def metadata(mean, std, threshold: float, variant: str, base: int, radius_um: float = RADIUS_UM) -> dict:
    """The safetensors metadata: network, preprocessing contract, post-processing threshold, provenance."""
    return {
        "model": "SDRDIN", "scenario": "mihc-tcell-phenotypes", "variant": variant, "base_features": str(base),
        "n_classes": str(len(PHENOTYPES)), "classes": json.dumps(list(PHENOTYPES) + ["background"]),
        "input": f"(N, 3, H, W) float32 RGB at {MIHC_MPP} µm/px: (x / 255 - mean) / std; H, W multiples of 8",
        "normalization_mean": json.dumps([round(float(v), 6) for v in mean]),
        "normalization_std": json.dumps([round(float(v), 6) for v in std]),
        "threshold": str(threshold), "radius_um": str(radius_um), "dtype": "float32",
        "trained_on_synthetic": "true", "training_data": "core.generator.mihc (synthetic mIHC sections only)",
    }


def tune_sections(n: int, size_px: int) -> list:
    """The tuning sections: seeds TUNE_SEEDS[0] .. + n - 1."""
    from core.generator.mihc import generate_mihc

    if not 1 <= n <= TUNE_SEEDS[1] - TUNE_SEEDS[0]:
        raise ValueError(f"--tune-sections must be 1 to {TUNE_SEEDS[1] - TUNE_SEEDS[0]}, got {n}")
    return [generate_mihc((size_px, size_px), TUNE_SEEDS[0] + i) for i in range(n)]


def _scores_at(model, secs, maps, thresholds, class_window_um: float | None = None) -> list[dict]:
    """Tune-section scores of one model at each detection threshold (maps computed once)."""
    from dataclasses import replace

    rows = []
    for t in thresholds:
        params = replace(model.params, threshold=float(t))
        if class_window_um is not None:
            params = replace(params, class_window_um=float(class_window_um))
        s = score_model(model, secs, maps, params)
        rows.append({"threshold": round(float(t), 3), "class_window_um": round(params.class_window_um, 2),
                     "detection_f1": s["detection"]["f1"],
                     "precision": s["detection"]["precision"], "recall": s["detection"]["recall"],
                     "classification_weighted_f1": (s["classification"] or {}).get("weighted_f1"),
                     "score": selection_score(s, model.variant)})
    return rows


def train(args: argparse.Namespace) -> dict:
    """Run one training stage (see the module docstring); writes ``args.out`` and ``<out stem>.train.json``."""
    from safetensors.torch import save_file

    from core.nets.sdrdin import SDRDIN
    from core.scenarios.base import pick_device
    from core.scenarios.mihc import model_from_net
    from core.training.sdrdin import sdrdin_loss
    from core.training.stage import TimedStage

    print(SELECTION_RULE, flush=True)
    if args.size % 8 or args.tune_size % 8:
        raise SystemExit(f"error: --size and --tune-size must be multiples of 8, got {args.size} and {args.tune_size}")
    if not 1 <= args.tune_sections <= TUNE_SEEDS[1] - TUNE_SEEDS[0]:
        raise SystemExit(f"error: --tune-sections must be 1 to {TUNE_SEEDS[1] - TUNE_SEEDS[0]}, got {args.tune_sections}")
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    gen = torch.Generator().manual_seed(args.seed)
    radius_px = args.radius_um / MIHC_MPP
    first_seed = TRAIN_SEED_BASE + STREAM_SEEDS * int(args.seed)
    stream = SectionStream(first_seed, args.size, radius_px, args.workers)
    try:
        pool = SectionPool(stream, args.pool, gen)
        if args.init:
            from safetensors import safe_open

            with safe_open(args.init, framework="pt") as fh:
                meta = fh.metadata()
            mean = np.asarray(json.loads(meta["normalization_mean"]), np.float32)
            std = np.asarray(json.loads(meta["normalization_std"]), np.float32)
        else:
            mean, std = pool.mean_std()
        m = torch.as_tensor(mean).view(1, 3, 1, 1).to(device)
        s = torch.as_tensor(std).view(1, 3, 1, 1).to(device)
        net = SDRDIN(len(PHENOTYPES), args.variant, args.base)
        if args.init:  # warm start; strict, so the variant and width must match
            from safetensors.torch import load_file

            net.load_state_dict(load_file(args.init), strict=True)
        net.to(device)
        opt = torch.optim.Adam(net.parameters(), lr=args.lr)
        tune = tune_sections(args.tune_sections, args.tune_size)

        def score(thresholds, windows_um=(None,)):
            net.eval()
            model = model_from_net(net, metadata(mean, std, 0.5, args.variant, args.base, args.radius_um), device)
            maps = [model.predict_maps(sec.image) for sec in tune]
            return [r for w in windows_um for r in _scores_at(model, tune, maps, thresholds, w)]

        stage = TimedStage(args.minutes, args.max_steps, args.eval_minutes, warmup_steps=50)
        history, running = [], []
        while not stage.finished():
            stage.set_lr(opt, args.lr)
            net.train()
            x, ct, dt = pool.batch(args.batch)
            x, ct, dt = x.to(device), ct.to(device), dt.to(device)
            out = net((x - m) / s)
            terms = sdrdin_loss(out, ct, dt, args.det_weight)
            opt.zero_grad()
            terms["total"].backward()
            opt.step()
            running.append([float(v.detach()) for k, v in terms.items() if k != "total"])
            pool.refresh(args.fresh)
            if stage.tick():
                rows = score(args.eval_thresholds)
                top = max(rows, key=lambda r: r["score"])
                rec = {"step": stage.step, "elapsed_s": round(stage.elapsed_s(), 1), "lr": opt.param_groups[0]["lr"],
                       "sections_seen": stream.seeds_used - first_seed,
                       "loss_terms": np.mean(running, axis=0).round(4).tolist(), "tune": top}
                running = []
                history.append(rec)
                print(json.dumps(rec), flush=True)
                stage.keep_if_best(top["score"], net)
        train_time = stage.elapsed_s()
        step = stage.step
        sections_seen = stream.seeds_used - first_seed
    finally:
        stream.close()
    stage.restore_best(net)  # else no step was scored: the weights as they are
    sweep = score(SWEEP_THRESHOLDS, CLASS_WINDOWS_UM)
    paper_window = [r for r in sweep if r["class_window_um"] == CLASS_WINDOWS_UM[0]]
    threshold = max(paper_window, key=lambda r: (r["detection_f1"], -abs(r["threshold"] - 0.5)))["threshold"]
    at_threshold = [r for r in sweep if r["threshold"] == threshold]
    # the class window: the highest weighted class F1 at that threshold, ties to the larger (the paper's first)
    chosen = max(at_threshold, key=lambda r: (r["classification_weighted_f1"] or 0.0, r["class_window_um"]))
    if args.variant == "drdin-detection":
        chosen = at_threshold[0]
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    meta_out = metadata(mean, std, chosen["threshold"], args.variant, args.base, args.radius_um)
    meta_out["class_window_um"] = str(chosen["class_window_um"])
    save_file({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, str(out_path), metadata=meta_out)
    result = {
        "scenario": "mihc-tcell-phenotypes", "variant": args.variant, "base_features": args.base,
        "parameters": int(sum(p.numel() for p in net.parameters())), "size_px": args.size, "batch": args.batch,
        "lr": args.lr, "det_weight": args.det_weight, "radius_um": args.radius_um, "radius_px": radius_px,
        "minutes": args.minutes, "max_steps": args.max_steps, "eval_minutes": args.eval_minutes,
        "eval_thresholds": list(args.eval_thresholds), "steps": step, "best_step": stage.best["step"], "init": args.init,
        "seed": args.seed, "device": str(device), "threads": args.threads, "workers": args.workers,
        "pool": args.pool, "fresh": args.fresh, "train_time_s": round(train_time, 1),
        "train_seeds": [first_seed, first_seed + sections_seen - 1], "sections_seen": sections_seen,
        "tune_seeds": [TUNE_SEEDS[0], TUNE_SEEDS[0] + args.tune_sections - 1], "tune_size_px": args.tune_size,
        "selection_rule": SELECTION_RULE, "threshold": chosen["threshold"], "class_window_um": chosen["class_window_um"],
        "tune_at_threshold": chosen,
        "tune_sweep": sweep, "normalization_mean": np.asarray(mean).tolist(), "normalization_std": np.asarray(std).tolist(),
        "history": history,
    }
    out_path.with_suffix(".train.json").write_text(json.dumps(result, indent=2))
    return result


def add_train_arguments(t: argparse.ArgumentParser) -> None:
    t.add_argument("--variant", default="s-drdin", choices=["s-drdin", "s-drdin-gradient", "drdin-detection",
                                                            "drdin-classification"],
                   help="S-DRDIN or one of the paper's ablation variants (§2.4)")
    t.add_argument("--base", type=int, default=16, help="channels of the first encoder block (divisible by 4)")
    t.add_argument("--size", type=int, default=224, help="side of a training section in px (multiple of 8; paper 224)")
    t.add_argument("--batch", type=int, default=4, help="sections per step (paper 4)")
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--det-weight", type=float, default=1.0, help="weight of the detection BCE in the sum")
    t.add_argument("--radius-um", type=float, default=RADIUS_UM, help="disk radius of the targets, µm")
    t.add_argument("--minutes", type=float, default=40.0, help="wall-clock training budget")
    t.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (0 = budget only)")
    t.add_argument("--eval-minutes", type=float, default=5.0, help="score on the tune sections every so often")
    t.add_argument("--eval-thresholds", type=float, nargs="+", default=[0.4, 0.5, 0.6],
                   help="detection thresholds tried at each tune scoring (checkpoint choice)")
    t.add_argument("--tune-sections", type=int, default=16, help="tuning sections (seeds 5000, 5001, ...)")
    t.add_argument("--tune-size", type=int, default=320, help="side of a tuning section, px")
    t.add_argument("--pool", type=int, default=64, help="training sections kept in memory")
    t.add_argument("--fresh", type=int, default=2, help="pool sections replaced by fresh ones after every step")
    t.add_argument("--workers", type=int, default=0, help="processes generating sections ahead (0: in-line)")
    t.add_argument("--init", help="warm start from these weights (same --variant and --base); keeps their normalisation")
    t.add_argument("--seed", type=int, default=0, help="seeds torch and the stream of training sections")
    t.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    t.add_argument("--threads", type=int, default=2,
                   help="torch CPU threads (2 on an idle 2-core machine; 1 when other jobs share the cores: with 2 threads "
                        "on a loaded machine a step was measured 40 x slower than with 1)")
    t.add_argument("--out", required=True, help="weights file to write (.safetensors; the record beside it)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m core.training.mihc", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    add_train_arguments(sub.add_parser("train", help="train on fresh synthetic sections, tune on held-out seeds"))
    from core.training import mihc_card

    mihc_card.add_arguments(sub.add_parser("card", help="write the model card beside the weights"))
    args = p.parse_args(argv)
    if args.cmd == "train":
        result = train(args)
        print(json.dumps({k: v for k, v in result.items() if k not in ("history", "tune_sweep", "selection_rule")},
                         indent=2))
        return 0
    return mihc_card.run(args)


if __name__ == "__main__":
    raise SystemExit(main())
