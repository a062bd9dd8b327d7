"""One training stage bounded by wall time and steps: learning-rate schedule, evaluation cadence, best weights.

Every network of TILscope is trained on 2 CPU cores in stages warm-started from the previous
one (``--init``), each with a budget in minutes (the brief's CPU rule). :class:`TimedStage` is the
bookkeeping those loops share (S-DRDIN, CD-UNET, the mIHC S-DRDIN, the Hoechst U-Net):

- the learning rate: linear warm-up over the first steps, then a cosine decay from 1 to a floor
  over the budget (Loshchilov & Hutter 2017, SGDR, without restarts);
- the evaluation cadence: a tune-split score every ``eval_minutes`` and after the last step;
- the selection: the weights of the best tune score seen are kept (a copy on the CPU) and put
  back at the end, so a stage that overshoots returns its best checkpoint.

The loop itself (batches, loss, optimiser step, what a score is) stays in each training module.
"""

from __future__ import annotations

import math
import time

import torch


class TimedStage:
    """Budget, schedule and best-checkpoint keeping of one training stage.

    Parameters
    ----------
    minutes : float
        Wall-clock budget; 0 means no time limit (then ``max_steps`` must be set).
    max_steps : int, default 0
        Step limit (0: none); when set, the schedule runs over whichever of time and steps ends first.
    eval_minutes : float, default 0
        Minutes between tune-split scores; 0 scores only after the last step.
    warmup_steps : int, default 50
        Steps of linear learning-rate warm-up.
    floor : float, default 0.02
        Final learning rate as a fraction of the base rate.

    Raises
    ------
    ValueError
        If neither a time budget nor a step limit is given, or a value is negative.

    Example
    -------
    >>> stage = TimedStage(minutes=0, max_steps=2)
    >>> while not stage.finished():
    ...     factor = stage.lr_factor()
    ...     due = stage.tick()
    >>> stage.step, due
    (2, True)
    """

    def __init__(self, minutes: float, max_steps: int = 0, eval_minutes: float = 0.0, warmup_steps: int = 50,
                 floor: float = 0.02):
        if minutes < 0 or max_steps < 0 or eval_minutes < 0 or warmup_steps < 0 or not 0 <= floor <= 1:
            raise ValueError(f"stage limits must be >= 0 (floor in [0, 1]); got minutes={minutes}, "
                             f"max_steps={max_steps}, eval_minutes={eval_minutes}, warmup_steps={warmup_steps}, floor={floor}")
        if minutes <= 0 and not max_steps:
            raise ValueError("a training stage needs a time budget (minutes > 0) or a step limit (max_steps > 0)")
        self.budget_s = float(minutes) * 60.0
        self.max_steps = int(max_steps)
        self.eval_every_s = float(eval_minutes) * 60.0
        self.warmup_steps = int(warmup_steps)
        self.floor = float(floor)
        self.step = 0
        self.t0 = time.time()
        self._next_eval_s = self.eval_every_s if self.eval_every_s > 0 else math.inf
        self.best: dict = {"score": -math.inf, "step": 0, "state": None}

    def elapsed_s(self) -> float:
        """Seconds since the stage started."""
        return time.time() - self.t0

    def finished(self) -> bool:
        """Whether the time budget or the step limit is reached."""
        return (self.budget_s > 0 and self.elapsed_s() >= self.budget_s) or bool(self.max_steps and self.step >= self.max_steps)

    def fraction(self) -> float:
        """Fraction of the stage done, in [0, 1]: the larger of time used and steps taken."""
        by_time = self.elapsed_s() / self.budget_s if self.budget_s > 0 else 0.0
        by_steps = self.step / self.max_steps if self.max_steps else 0.0
        return min(max(by_time, by_steps), 1.0)

    def lr_factor(self, constant: bool = False) -> float:
        """Learning-rate multiplier for the next step: warm-up x (cosine to ``floor``, or 1 when ``constant``)."""
        warm = min(1.0, (self.step + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        if constant:
            return warm
        return warm * (self.floor + (1.0 - self.floor) * 0.5 * (1.0 + math.cos(math.pi * self.fraction())))

    def set_lr(self, optimizer: torch.optim.Optimizer, base_lr: float, constant: bool = False) -> float:
        """Set every parameter group's rate to ``base_lr`` x :meth:`lr_factor`; returns the rate."""
        lr = base_lr * self.lr_factor(constant)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr

    def tick(self) -> bool:
        """Count one optimiser step; True when a tune score is due (cadence reached, or the stage is over)."""
        self.step += 1
        last = self.finished()
        if self.elapsed_s() >= self._next_eval_s or last:
            while self._next_eval_s <= self.elapsed_s():
                self._next_eval_s += self.eval_every_s
            return True
        return False

    def keep_if_best(self, score: float, net: torch.nn.Module, **extra) -> bool:
        """Keep a CPU copy of ``net``'s weights when ``score`` beats every earlier one; True if it did.

        ``extra`` items (e.g. the tune record) are stored beside the score in :attr:`best`.
        """
        if score > self.best["score"]:
            self.best = {"score": score, "step": self.step, **extra,
                         "state": {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}}
            return True
        return False

    def restore_best(self, net: torch.nn.Module) -> bool:
        """Load the best kept weights into ``net`` (strict); False, leaving ``net`` as it is, when none was kept."""
        if self.best["state"] is None:
            return False
        net.load_state_dict(self.best["state"], strict=True)
        return True
