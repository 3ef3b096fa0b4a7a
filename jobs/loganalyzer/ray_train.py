"""The Ray Train engine of ``loganalyzer train`` (``engine: ray``): Ray Train's ``TorchTrainer`` starts the
ranks instead of torchrun, and each runs the same recipe (``loganalyzer.train.run``) as one torchrun rank would.

Locally it starts a Ray sized for the workers; in a KubeRay RayJob (``loganalyzer.launch``, ``manifests/
components/ray-sft``) it joins the cluster in ``RAY_ADDRESS``.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from loganalyzer.train import TrainConfig

log = logging.getLogger("loganalyzer.ray_train")

# What a Ray worker needs from the driver's environment (a remote Ray cluster does not inherit it).
RAY_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
           "LOGANALYZER_PARENT_RUN_ID", "LOGANALYZER_CONFIGS_DIR", "HF_HOME", "HF_TOKEN", "HF_HUB_OFFLINE")
RAY_METRICS = "ray/metrics.json"  # rank 0's train metrics, for the driver


def run_on_ray(cfg: TrainConfig) -> dict:
    """``engine: ray``: the same training function on ``ray_workers`` ranks under Ray Train's ``TorchTrainer``
    (which starts the workers and their torch.distributed process group: NCCL with GPUs, gloo on CPU).

    Connects to ``ray_address`` / ``RAY_ADDRESS`` (a KubeRay RayJob sets it), else starts a local Ray sized for
    the workers. Returns rank 0's train metrics. Ray's own run state goes to ``<output_dir>/ray``.
    """
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    env = {k: os.environ[k] for k in RAY_ENV if os.environ.get(k)}
    local_ray = not (cfg.ray_address or os.environ.get("RAY_ADDRESS"))
    if local_ray:  # one CPU per worker plus one for the trainer's controller; a small object store (nothing big moves)
        ray.init(num_cpus=cfg.ray_workers + 1, num_gpus=cfg.ray_workers if cfg.ray_use_gpu else 0,
                 object_store_memory=256 * 2**20, include_dashboard=False, runtime_env={"env_vars": env})
    else:
        ray.init(address=cfg.ray_address, runtime_env={"env_vars": env})
    output = Path(cfg.output_dir).resolve()
    # Workers do not share the driver's working directory: hand them absolute paths.
    local = {k: str(Path(v).resolve()) for k in ("model_name_or_path", "train_file", "eval_file")
             if (v := getattr(cfg, k)) and Path(v).exists()}
    trainer = TorchTrainer(
        _ray_worker, train_loop_config=cfg.model_copy(update={"engine": "torchrun", "output_dir": str(output),
                                                              **local}).model_dump(),
        scaling_config=ScalingConfig(num_workers=cfg.ray_workers, use_gpu=cfg.ray_use_gpu),
        run_config=RunConfig(name=f"train-{cfg.mode}", storage_path=str(output / "ray")))
    log.info("Ray Train: %d worker(s), %s", cfg.ray_workers, "GPU" if cfg.ray_use_gpu else "CPU")
    try:
        trainer.fit()  # raises ray.train.TrainingFailedError with the worker's traceback
    finally:
        ray.shutdown()  # a local Ray stops with us; a cluster connection is closed
    return json.loads((output / RAY_METRICS).read_text())



def _ray_worker(config: dict) -> None:
    import ray.train

    from loganalyzer.train import TrainConfig, run

    metrics = run(TrainConfig(**config))
    if ray.train.get_context().get_world_rank() == 0:  # Result.metrics stays empty without a checkpoint
        (Path(config["output_dir"]) / RAY_METRICS).write_text(json.dumps(metrics))
    ray.train.report(metrics)
