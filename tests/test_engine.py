"""dynamics.engine: the step runner's hook order and step numbers, the one divergence error and its step
convention in every loop that raises it, and the chunked evaluation against a one-shot computation."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dynamics.engine import (
    BoundaryAfter,
    BoundaryBefore,
    OnStep,
    StepOutput,
    TrainingDiverged,
    check_finite,
    chunked_outputs,
    evaluate,
    run_steps,
)


class Recorder:
    def __init__(self, log):
        self.log = log

    def before_step(self, step):
        self.log.append(("before", step))

    def on_step(self, step, out):
        self.log.append(("after", step, out.loss))


def test_run_steps_calls_hooks_in_order_with_steps_completed():
    log = []

    def step_fn(step):
        log.append(("step", step))
        return StepOutput(float(step) / 10)

    done = run_steps(step_fn, 2, 4, [Recorder(log), object(), BoundaryAfter(lambda k: log.append(("boundary", k)))])
    assert done == 4
    assert log == [("before", 2), ("step", 2), ("after", 2, 0.2), ("boundary", 3),
                   ("before", 3), ("step", 3), ("after", 3, 0.3), ("boundary", 4)]


def test_run_steps_stops_on_request_without_after_hooks_and_runs_nothing_when_done():
    log = []
    done = run_steps(lambda s: StepOutput(None, stop=s == 5), 0, None, [OnStep(lambda s, out: log.append(s))])
    assert done == 6 and log == [0, 1, 2, 3, 4]  # the stopping step 5 completes, its hooks do not run
    assert run_steps(lambda s: pytest.fail("no step is due"), 7, 7) == 7


def test_boundaries_receive_steps_done_and_their_arguments():
    seen = []
    cbs = [BoundaryBefore(lambda k, c: seen.append(("before", k, c())), (lambda: "cap",)),
           BoundaryAfter(lambda k, c: seen.append(("after", k, c())), (lambda: "cap",))]
    run_steps(lambda s: StepOutput(1.0), 0, 2, cbs)
    assert seen == [("before", 0, "cap"), ("after", 1, "cap"), ("before", 1, "cap"), ("after", 2, "cap")]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_divergence_names_the_steps_completed_before_the_bad_loss(bad):
    after = []
    with pytest.raises(TrainingDiverged) as info:
        run_steps(lambda s: StepOutput(bad if s == 3 else 1.0), 0, 10, [OnStep(lambda s, out: after.append(s))])
    err = info.value
    assert isinstance(err, FloatingPointError) and err.step == 3 and after == [0, 1, 2]
    assert (math.isnan(err.value) if math.isnan(bad) else err.value == bad)
    assert "training diverged" in str(err) and "at step 3" in str(err)
    assert check_finite(0.5, 1) == 0.5


def test_evaluate_equals_the_one_shot_loss_and_accuracy_for_any_chunk():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(23, 5, generator=g, dtype=torch.float64), torch.randint(0, 4, (23,), generator=g)
    lin = nn.Linear(5, 4).double()
    with torch.no_grad():
        z = lin(x)
        loss, acc = float(F.cross_entropy(z, y)), float((z.argmax(1) == y).double().mean())
        lik = float(z.softmax(1).gather(1, y[:, None]).mean())
    for chunk in (1, 7, 23, 100):
        ev = evaluate(lin, x, y, lambda zc, yc: F.cross_entropy(zc, yc, reduction="sum").item(), chunk,
                      {"lik": lambda zc, yc: zc.softmax(1).gather(1, yc[:, None]).sum().item()})
        # float64 sums of 23 O(1) terms in a different order: a few ulps
        assert ev["loss"] == pytest.approx(loss, rel=1e-13) and ev["lik"] == pytest.approx(lik, rel=1e-13)
        assert ev["accuracy"] == acc  # a count over 23: exact
    other = (y + 1) % 4  # accuracy against other labels than the loss's targets
    ev = evaluate(lin, x, y, lambda zc, yc: 0.0, 5, labels=other)
    assert ev["accuracy"] == float((z.argmax(1) == other).double().mean()) and ev["loss"] == 0.0


def test_chunked_outputs_are_the_full_forward_without_gradients():
    lin = nn.Linear(3, 2)
    x = torch.randn(10, 3, generator=torch.Generator().manual_seed(1))
    out = chunked_outputs(lin, x, 4)
    assert not out.requires_grad and torch.equal(out, torch.cat([lin(x[:4]), lin(x[4:8]), lin(x[8:])]).detach())


# --- the convention in the loops that raise it ----------------------------------------------------------

def _nan_on_call(k, loss_fn):
    """loss_fn, except that its k-th call (0-based) returns NaN (still differentiable)."""
    calls = []

    def fn(out, y):
        calls.append(1)
        loss = loss_fn(out, y)
        return loss * math.nan if len(calls) == k + 1 else loss

    return fn


def test_dynamics_train_diverges_at_the_step_of_the_bad_loss():
    from dynamics.train import TrainingConfig, train
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    x = torch.randn(20, 3)
    with pytest.raises(TrainingDiverged) as info:
        train(model, _nan_on_call(2, F.mse_loss), x, x.sum(1, keepdim=True), TrainingConfig(num_steps=5, batch_size=4),
              torch.Generator().manual_seed(0))
    assert info.value.step == 2


def test_train_abc_diverges_at_the_step_of_the_bad_batch():
    from dynamics.abc_train import train_abc
    from models.abc import ABCNet, ABCNetSpec, make_parameterization
    net = ABCNet(ABCNetSpec(make_parameterization("mup", 2), 4, 8, 3, "relu"), torch.Generator().manual_seed(0))
    x, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    x[5] = math.nan
    batches = [torch.tensor([0, 1]), torch.tensor([2, 3]), torch.tensor([4, 5])]  # step 2 sees the NaN row
    with pytest.raises(TrainingDiverged) as info:
        train_abc(net, x, y, 5, 2, 0.1, torch.Generator(), batch_list=batches)
    assert info.value.step == 2


def test_basis_trainer_diverges_at_the_steps_completed_before_the_bad_loss():
    from dynamics.basis_training import Trainer
    from dynamics.schedules import LRSchedule
    torch.manual_seed(0)
    net = nn.Linear(4, 3)
    x, y = torch.randn(12, 4), torch.randint(0, 3, (12,))
    trainer = Trainer(net, torch.optim.SGD(net.parameters(), lr=0.1), LRSchedule(0.1, 0, 0.1, 0.5, 10),
                      _nan_on_call(2, F.cross_entropy), x, y, batch_size=4, num_epoch=2, grad_clip=None,
                      batch_gen=torch.Generator().manual_seed(0))
    with pytest.raises(TrainingDiverged) as info:
        trainer.run(6)
    assert info.value.step == 2 and trainer.steps_done == 3  # before the engine it named step 3
