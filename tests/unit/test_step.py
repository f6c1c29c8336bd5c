"""fcn.engine.step, the training step without Ray: importable with Ray and MLflow absent, gradient
accumulation and DDP give the update of one big batch, for a mean and a summed loss."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.distributed as dist
from helpers_gloo import spawn
from torch import nn

from fcn.engine import optim, step

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class TinyNet(nn.Module):
    coarse_stride = 4

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.score = nn.Conv2d(8, 3, 1)

    def forward(self, x):
        return self.score(torch.relu(self.conv(x)))


def _data(n=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, 8, 8, generator=g)
    masks = torch.randint(0, 3, (n, 8, 8), generator=g)
    return images, masks


def _sgd(loss):
    return optim.Recipe("sgd", 0.1, 0.9, 5e-4, 2, loss)


def _stepped(micro_batches, recipe, **options):
    model, bare = step.prepare(TinyNet(), torch.device("cpu"), **options.pop("prepare", {}))
    optimizer = optim.build_optimizer(bare, recipe)
    loss = step.train_step(model, optimizer, micro_batches, recipe, **options)
    return loss, [p.detach().clone() for p in bare.parameters()]


@pytest.mark.parametrize("loss", ["mean", "sum"])
def test_accumulated_micro_batches_equal_one_batch(loss):
    images, masks = _data()
    whole_loss, whole = _stepped([(images, masks)], _sgd(loss))
    split = [(images[:1], masks[:1]), (images[1:], masks[1:])]
    parts_loss, parts = _stepped(split, _sgd(loss), prepare={"channels_last": True},
                                 channels_last=True)  # fmt: skip
    assert parts_loss == pytest.approx(whole_loss, rel=1e-5)
    for a, b in zip(whole, parts, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_loss_falls_on_cpu_without_a_process_group():
    images, masks = _data(4)
    model, bare = step.prepare(TinyNet(), torch.device("cpu"))
    assert model is bare and not dist.is_initialized()
    recipe = optim.Recipe("adam", 1e-2, 0.9, 0.0, 4, "mean")
    optimizer = optim.build_optimizer(bare, recipe)
    losses = [step.train_step(model, optimizer, [(images, masks)], recipe) for _ in range(30)]
    assert losses[-1] < 0.9 * losses[0]  # random labels: memorised only in part


def test_amp_is_cuda_only():
    cpu = torch.device("cpu")
    assert step.make_scaler(cpu, "fp16") is None
    with step.amp_context(cpu, "bf16"):
        assert not torch.is_autocast_enabled("cpu")
    with pytest.raises(RuntimeError, match="process group"):
        step.prepare(TinyNet(), cpu, ddp=True)


def _ddp_worker(rank, world, loss, out):
    images, masks = _data()
    mine = [(images[rank : rank + 1], masks[rank : rank + 1])]
    value, params = _stepped(mine, _sgd(loss), prepare={"ddp": True})
    torch.save({"loss": value, "params": params}, os.path.join(out, f"{loss}{rank}.pt"))


@pytest.mark.parametrize("loss", ["mean", "sum"])
def test_two_ddp_workers_equal_one_process_accumulating(tmp_path, loss):
    """Each of 2 gloo workers steps on one image; the update equals one process accumulating
    both, for a mean loss (global mean) and a summed one (sum over every worker's images)."""
    spawn(_ddp_worker, 2, tmp_path, loss, str(tmp_path))
    images, masks = _data()
    single_loss, single = _stepped([(images[:1], masks[:1]), (images[1:], masks[1:])], _sgd(loss))
    results = [torch.load(tmp_path / f"{loss}{rank}.pt", weights_only=True) for rank in (0, 1)]
    for result in results:
        for a, b in zip(single, result["params"], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # The reported loss is the same on every worker: the workers' mean.
    assert results[0]["loss"] == pytest.approx(results[1]["loss"])
    if loss == "mean":
        assert results[0]["loss"] == pytest.approx(single_loss, rel=1e-5)


HIDDEN = ("ray", "mlflow", "pyarrow", "fsspec", "s3fs")


def test_step_imports_and_runs_with_ray_and_mlflow_absent():
    """The GPU machine has torch and numpy but no Ray, MLflow, pyarrow or s3fs."""
    script = textwrap.dedent(f"""
        import sys
        class Hide:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {HIDDEN!r}:
                    raise ModuleNotFoundError(f"hidden: {{name}}")
        sys.meta_path.insert(0, Hide())
        import torch
        from fcn.engine import optim, step
        model, bare = step.prepare(torch.nn.Conv2d(3, 2, 1), torch.device("cpu"))
        recipe = optim.Recipe("sgd", 0.1, 0.9, 0.0, 1, "sum")
        batch = [(torch.randn(1, 3, 4, 4), torch.randint(0, 2, (1, 4, 4)))]
        loss = step.train_step(model, optim.build_optimizer(bare, recipe), batch, recipe)
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in {HIDDEN!r})
        assert not loaded, loaded
        assert "fcn.storage" not in sys.modules and "fcn.tracking" not in sys.modules
        print("ok", loss)
    """)
    env = {**os.environ, "PYTHONPATH": REPO}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok") and np.isfinite(float(done.stdout.split()[1]))
