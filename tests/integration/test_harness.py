"""The harness itself: a job submitted with `ray job submit` sees the S3 and MLflow servers."""

import re

import pytest

pytestmark = pytest.mark.integration

JOB = """
import mlflow, ray
from fcn import storage
ray.init()
assert ray.get(ray.remote(lambda: 41 + 1).remote()) == 42
storage.write_text("{uri}", "written by a job")
with mlflow.start_run(run_name="harness") as run:
    mlflow.log_metric("mean_iu", 0.5, step=3)
print("RUN_ID", run.info.run_id)
"""


def test_submitted_job_reaches_s3_and_mlflow(s3, mlflow_server, ray_head):
    import mlflow

    uri = s3.uri("harness/hello.txt")
    code, logs = ray_head.submit(
        ["-c", JOB.format(uri=uri)], env={**s3.env, **mlflow_server.env}, timeout=180
    )
    assert code == 0, logs
    assert s3.keys("harness/") == ["harness/hello.txt"]
    run_id = re.search(r"RUN_ID ([0-9a-f]{32})", logs).group(1)
    run = mlflow.MlflowClient(mlflow_server.uri).get_run(run_id)
    assert run.data.metrics["mean_iu"] == 0.5
    assert run.info.status == "FINISHED"
