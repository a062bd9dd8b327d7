"""The shared stage bookkeeping of the training loops: schedule, evaluation cadence, best weights."""

import math

import pytest
import torch

from core.training.stage import TimedStage


def test_step_limited_stage_warms_up_decays_and_scores_after_the_last_step():
    stage = TimedStage(minutes=0, max_steps=10, warmup_steps=4, floor=0.1)
    factors, due = [], []
    while not stage.finished():
        factors.append(stage.lr_factor())
        due.append(stage.tick())
    assert stage.step == 10
    assert due == [False] * 9 + [True]  # no cadence: only the end is scored
    assert factors[0] == pytest.approx(0.25 * (0.1 + 0.9 * 0.5 * (1 + math.cos(0.0))))  # warm-up 1/4, cosine at 1
    assert factors[3] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.3)))  # warm, 3 of 10 steps done
    assert all(a > b for a, b in zip(factors[3:], factors[4:]))  # the cosine decays
    assert stage.fraction() == 1.0 and stage.lr_factor() == pytest.approx(0.1)
    assert stage.lr_factor(constant=True) == 1.0


def test_time_cadence_scores_every_eval_minutes():
    stage = TimedStage(minutes=10, max_steps=3, eval_minutes=0.001)  # 60 ms cadence
    stage.t0 -= 0.2  # 200 ms already spent: one score is due (missed ones are not queued)
    assert stage.tick() is True
    assert stage.tick() is False
    assert stage.tick() is True  # the step limit ends the stage: scored


def test_best_weights_are_kept_and_restored():
    net = torch.nn.Linear(2, 1)
    stage = TimedStage(minutes=0, max_steps=3)
    with torch.no_grad():
        net.weight.fill_(1.0)
    stage.tick()
    assert stage.keep_if_best(0.5, net, tune={"f1": 0.5})
    with torch.no_grad():
        net.weight.fill_(2.0)
    stage.tick()
    assert not stage.keep_if_best(0.4, net)  # worse: the first copy stays
    assert stage.best["step"] == 1 and stage.best["tune"] == {"f1": 0.5}
    assert stage.restore_best(net)
    assert torch.equal(net.weight, torch.ones(1, 2))


def test_restore_without_a_score_leaves_the_net_and_bad_limits_are_refused():
    net = torch.nn.Linear(2, 1)
    before = net.weight.detach().clone()
    assert not TimedStage(minutes=1).restore_best(net)
    assert torch.equal(net.weight, before)
    with pytest.raises(ValueError, match="time budget"):
        TimedStage(minutes=0, max_steps=0)
    with pytest.raises(ValueError, match=">= 0"):
        TimedStage(minutes=-1)
    opt = torch.optim.SGD(net.parameters(), lr=1.0)
    assert TimedStage(minutes=1, warmup_steps=0).set_lr(opt, 0.5) == pytest.approx(0.5)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5)
