"""benchmarks/gpu.py on CPU at smoke sizes, with Ray, MLflow and s3fs made unimportable: the
training step and the segment batch function it runs are the Ray-free core that the Ray jobs
call, and this is how a GPU machine without the cluster stack runs them."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Runs the script as __main__ with the cluster stack hidden from the import system.
RUNNER = """
import runpy, sys

class Hidden:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("ray", "mlflow", "s3fs"):
            raise ImportError(f"{name} is hidden in this test")

sys.meta_path.insert(0, Hidden())
sys.argv = ["benchmarks/gpu.py", *sys.argv[1:]]
runpy.run_path("benchmarks/gpu.py", run_name="__main__")
"""


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", RUNNER, *args], cwd=REPO, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip


@pytest.mark.slow
def test_gpu_benchmark_runs_on_cpu_without_the_cluster_stack(tmp_path):
    report, export = tmp_path / "gpu.md", tmp_path / "export"
    done = run("--device", "cpu", "--tiny", "--output", str(report), "--export", str(export))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    text = report.read_text()
    assert "| fcn32s |" in text and "| fcn8s |" in text and "bf16 masks equal" in text
    # The exported checkpoint loads again and gives the masks it gave when exported.
    verified = run("--device", "cpu", "--verify", str(export))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "100.000000% of pixels" in verified.stdout


def test_a_hidden_package_really_is_hidden():
    done = subprocess.run(
        [sys.executable, "-c", RUNNER.replace('runpy.run_path("benchmarks/gpu.py", '
                                              'run_name="__main__")', "import ray")],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode != 0 and "hidden in this test" in done.stderr
