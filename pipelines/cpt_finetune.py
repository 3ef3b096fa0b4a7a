"""The loganalyzer DAG, written once with the KFP v2 DSL, built for two targets.

    paths -> chunk -> redact ─┬─> synthesize ─┬─> build-datasets -> cpt -> sft(cpt) x N ┐
                              └─> base-model ─┘                 └──> sft(base) x N ────┴-> evaluate -> finish
                                                                                  (cluster: └-> deploy)

``replicates: N`` trains both SFTs once per seed (``seed``, ``seed + 1``, ...; a ``ParallelFor``) and evaluate
reports mean ± sd over seeds and whether cpt_sft vs sft is beyond seed noise (``loganalyzer.replicates``).
``judge_endpoint`` + ``judge_model`` add the LLM judge (``loganalyzer.judge``).

``build("local")``: training runs in the task's own process; ``make demo`` runs it with kfp's local runner
(``loganalyzer demo``). ``build("cluster")``: CPT and SFT are PyTorchJobs launched and watched by
``loganalyzer.launch`` (8 and 4 GPUs by default), evaluation runs on one GPU in the train image, the final model is
served by a KServe InferenceService (``loganalyzer.deploy``), every task mounts the data and models PVCs, and
Secrets (teacher key, MLflow and Hub credentials) come in through ``kfp.kubernetes``. ``make pipeline`` compiles
the cluster target into ``pipelines/cpt-finetune.yaml`` (Pipeline + PipelineVersion for ``kubectl apply``).

Each component is a thin wrapper around ``loganalyzer.steps``. MLflow: ``start`` opens one parent run tagged with
the KFP run id, every stage logs a nested run under it, ``finish`` attaches the report and closes it.
"""

# No `from __future__ import annotations`: KFP reads the real type annotations of components.

import functools
import os
from typing import NamedTuple

from kfp import dsl, kubernetes
from kfp.dsl import HTML, Markdown, Metrics, Output

# Each stage's defaults have one home, its config model; the pipeline's parameters take theirs from there (read
# when the pipeline is built; the components' bodies run in the task's own process and import only what they use).
from loganalyzer import k8s as kube
from loganalyzer.build_datasets import BuildDatasetsConfig
from loganalyzer.chunk import ChunkConfig
from loganalyzer.config import SEED
from loganalyzer.deploy import DeployConfig
from loganalyzer.evaluate import EvaluateConfig
from loganalyzer.launch import LaunchConfig
from loganalyzer.synthesize import SynthesizeConfig

# The images holding the loganalyzer package (`make images`); the local runner ignores them. Without a registry
# the cluster's nodes would pull `loganalyzer-jobs` from Docker Hub's library: the committed YAML names a
# placeholder registry that `make deploy IMAGE_REGISTRY=...` compiles away, and `pipeline run` refuses it.
PLACEHOLDER_REGISTRY = "registry.example.com/loganalyzer"
TAG = os.environ.get("LOGANALYZER_IMAGE_TAG", "0.1.0")
REGISTRY = os.environ.get("LOGANALYZER_IMAGE_REGISTRY", "").rstrip("/") or PLACEHOLDER_REGISTRY
JOBS_IMAGE = f"{REGISTRY}/loganalyzer-jobs:{TAG}"
TRAIN_IMAGE = f"{REGISTRY}/loganalyzer-train:{TAG}"

# Cluster wiring (loganalyzer.k8s); the same names as in manifests/ and the Helm chart (release name "loganalyzer").
DATA_PVC, MODELS_PVC, UID = kube.DATA_PVC, kube.MODELS_PVC, kube.UID
DATA_ROOT, MODELS_ROOT = kube.DATA_MOUNT, kube.MODELS_MOUNT
# Secrets as env, all optional (a cluster without one still runs), each only where it is used:
# MLflow credentials everywhere, the teacher's key for synthesize, the Hub token where the base model is loaded.
MLFLOW_SECRET = ("loganalyzer-mlflow", {"MLFLOW_TRACKING_USERNAME": "MLFLOW_TRACKING_USERNAME",
                                        "MLFLOW_TRACKING_PASSWORD": "MLFLOW_TRACKING_PASSWORD"})
TEACHER_SECRET = ("loganalyzer-teacher", {"OPENAI_API_KEY": "OPENAI_API_KEY"})
JUDGE_SECRET = ("loganalyzer-judge", {"OPENAI_API_KEY": "OPENAI_API_KEY"})  # the LLM judge's key, if it needs one
HF_SECRET = ("loganalyzer-hf", {"HF_TOKEN": "HF_TOKEN"})
TARGETS = ("local", "cluster")

# The images already hold kfp (pinned with everything else), so tasks never pip-install it at run time:
# an air-gapped cluster runs the pipeline as is.
component = functools.partial(dsl.component, install_kfp_package=False)


@component(base_image=JOBS_IMAGE)
def start(run_name: str, params: dict, tracking_uri: str, experiment: str, kfp_run_id: str) -> str:
    from loganalyzer import steps

    return steps.start(run_name=run_name, params=params, tracking_uri=tracking_uri, experiment=experiment,
                       kfp_run_id=kfp_run_id)


@component(base_image=JOBS_IMAGE)
def paths(run_dir: str, run_id: str, data_root: str,
          models_root: str) -> NamedTuple("Paths", run_dir=str, models_dir=str, job_prefix=str):
    from collections import namedtuple

    from loganalyzer import steps

    return namedtuple("Paths", "run_dir models_dir job_prefix")(*steps.paths(
        run_dir=run_dir, run_id=run_id, data_root=data_root, models_root=models_root))


@component(base_image=JOBS_IMAGE)
def chunk(logs: list, run_dir: str, max_chunks_per_file: int, seed: int, min_lines: int, max_lines: int,
          tracking_uri: str, experiment: str, parent_run_id: str) -> str:
    from loganalyzer import steps

    steps.use_tracking(tracking_uri=tracking_uri, experiment=experiment, parent_run_id=parent_run_id)
    return steps.chunk(logs=logs, run_dir=run_dir, max_chunks_per_file=max_chunks_per_file, seed=seed,
                       min_lines=min_lines, max_lines=max_lines)


@component(base_image=JOBS_IMAGE)
def base_model(base_model: str, run_dir: str, chunks: str) -> str:
    from loganalyzer import steps

    steps.use_tracking(tracking_uri="", experiment="", parent_run_id="")
    return steps.base_model(base_model=base_model, run_dir=run_dir, chunks=chunks)


@component(base_image=JOBS_IMAGE)
def redact(chunks: str, run_dir: str, mode: str, teacher: str, teacher_base_url: str, tracking_uri: str,
           experiment: str, parent_run_id: str) -> str:
    from loganalyzer import steps

    steps.use_tracking(tracking_uri=tracking_uri, experiment=experiment, parent_run_id=parent_run_id)
    return steps.redact(chunks=chunks, run_dir=run_dir, mode=mode, teacher=teacher, teacher_base_url=teacher_base_url)


@component(base_image=JOBS_IMAGE)
def synthesize(chunks: str, run_dir: str, teacher: str, teacher_base_url: str, teacher_model: str, tasks: list,
               concurrency: int, max_tokens: int, limit: int, redact: str, tracking_uri: str, experiment: str,
               parent_run_id: str) -> str:
    from loganalyzer import steps

    steps.use_tracking(tracking_uri=tracking_uri, experiment=experiment, parent_run_id=parent_run_id)
    return steps.synthesize(chunks=chunks, run_dir=run_dir, teacher=teacher, teacher_base_url=teacher_base_url,
                            teacher_model=teacher_model, tasks=tasks, concurrency=concurrency,
                            max_tokens=max_tokens, limit=limit, redact=redact)


@component(base_image=JOBS_IMAGE)
def build_datasets(chunks: str, synth: str, run_dir: str, tokenizer: str, nlplog: list, loghub_structured: list,
                   val_size: int, test_size: int, max_seq_length: int, tracking_uri: str, experiment: str,
                   parent_run_id: str) -> str:
    from loganalyzer import steps

    steps.use_tracking(tracking_uri=tracking_uri, experiment=experiment, parent_run_id=parent_run_id)
    return steps.build_datasets(chunks=chunks, synth=synth, run_dir=run_dir, tokenizer=tokenizer, nlplog=nlplog,
                                loghub_structured=loghub_structured, val_size=val_size, test_size=test_size,
                                max_seq_length=max_seq_length)


@component(base_image=JOBS_IMAGE)
def replicate_runs(name: str, model: str, datasets: str, models_dir: str, job_prefix: str, seed: int,
                   replicates: int, parent_run_id: str) -> list:
    from loganalyzer import steps

    return steps.replicate_runs(name=name, model=model, datasets=datasets, models_dir=models_dir,
                                job_prefix=job_prefix, seed=seed, replicates=replicates, parent_run_id=parent_run_id)


@component(base_image=JOBS_IMAGE)
def train(recipe: str, model: str, train_file: str, eval_file: str, output_dir: str, overrides: dict, seed: int,
          register_as: str, tracking_uri: str, experiment: str, parent_run_id: str) -> str:
    from loganalyzer import steps

    steps.use_tracking(tracking_uri=tracking_uri, experiment=experiment, parent_run_id=parent_run_id)
    return steps.train(recipe=recipe, model=model, train_file=train_file, eval_file=eval_file,
                       output_dir=output_dir, overrides=overrides, seed=seed, register_as=register_as)


@component(base_image=JOBS_IMAGE)
def launch_training(name: str, recipe: str, model: str, train_file: str, eval_file: str, output_dir: str,
                    overrides: dict, seed: int, image: str, nodes: int, nproc_per_node: int, namespace: str,
                    engine: str, register_as: str, models_pvc: str, models_root: str, tracking_uri: str,
                    experiment: str, parent_run_id: str) -> str:
    from loganalyzer import steps

    steps.use_tracking(tracking_uri=tracking_uri, experiment=experiment, parent_run_id=parent_run_id)
    return steps.launch_training(name=name, recipe=recipe, model=model, train_file=train_file,
                                 eval_file=eval_file, output_dir=output_dir, overrides=overrides, seed=seed,
                                 image=image, nodes=nodes, nproc_per_node=nproc_per_node, namespace=namespace,
                                 engine=engine, register_as=register_as, models_pvc=models_pvc,
                                 models_root=models_root)


@component(base_image=TRAIN_IMAGE)
def evaluate(test: str, base: str, sft: list, cpt_sft: list, sft_runs: list, cpt_sft_runs: list, run_dir: str,
             max_new_tokens: int, limit: int, judge_endpoint: str, judge_model: str, tracking_uri: str,
             experiment: str, parent_run_id: str, metrics: Output[Metrics], report_md: Output[Markdown],
             report_html: Output[HTML]) -> str:
    import shutil

    from loganalyzer import steps
    from loganalyzer.grounding import GROUNDING_METRICS
    from loganalyzer.judge import CRITERIA
    from loganalyzer.metrics import METRICS

    steps.use_tracking(tracking_uri=tracking_uri, experiment=experiment, parent_run_id=parent_run_id)
    models = {"base": [base], "sft": steps.in_seed_order(sft, sft_runs),
              "cpt_sft": steps.in_seed_order(cpt_sft, cpt_sft_runs)}
    report = steps.evaluate(test=test, models=models, run_dir=run_dir, max_new_tokens=max_new_tokens, limit=limit,
                            judge_endpoint=judge_endpoint, judge_model=judge_model)
    for name in ("base", "sft", "cpt_sft"):  # KFP run comparison shows these side by side
        entry = report[name]
        for m in METRICS:  # with replicates: the mean over seeds (grounding and judge: the pipeline seed's model)
            metrics.log_metric(f"{name}_{m}", round(entry["replicates"][m]["mean"] if "replicates" in entry
                                                    else entry[m], 4))
        for m in GROUNDING_METRICS:  # None: no answer stated a checkable detail
            if entry["grounding"][m] is not None:
                metrics.log_metric(f"{name}_{m}", round(entry["grounding"][m], 4))
        for c in CRITERIA:  # None: no judge, or it judged none of the answers
            if entry.get("judge", {}).get(c) is not None:
                metrics.log_metric(f"{name}_judge_{c}", round(entry["judge"][c], 3))
    shutil.copy(f"{run_dir}/eval/report.md", report_md.path)  # table: the run's Visualizations tab
    shutil.copy(f"{run_dir}/eval/report.html", report_html.path)  # table + chart
    return f"{run_dir}/eval/report.json"


@component(base_image=JOBS_IMAGE)
def deploy(name: str, replicates: list, models_pvc: str, models_root: str, namespace: str, serve_lora: bool,
           lora_base_dir: str, deployment_mode: str) -> str:
    from loganalyzer import steps

    steps.use_tracking(tracking_uri="", experiment="", parent_run_id="")
    model_dir = replicates[0]["output_dir"]  # the first replicate (seed = the pipeline's seed)
    url = steps.deploy(name=name, model_dir=model_dir, models_pvc=models_pvc, models_root=models_root,
                       namespace=namespace, lora_base_dir=lora_base_dir if serve_lora else "",
                       deployment_mode=deployment_mode)
    print(f"inference URL: {url}")  # also the task's output, shown in the run's UI
    return url


@component(base_image=JOBS_IMAGE)
def finish(parent_run_id: str, tracking_uri: str, experiment: str, report_file: str):
    from loganalyzer import steps

    steps.finish(parent_run_id=parent_run_id, tracking_uri=tracking_uri, experiment=experiment,
                 report_file=report_file)


def _on_cluster(task: dsl.PipelineTask, *secrets: tuple[str, dict]) -> dsl.PipelineTask:
    """PVC mounts, Secrets as env, non-root: what every cluster task gets."""
    kubernetes.mount_pvc(task, pvc_name=DATA_PVC, mount_path=DATA_ROOT)
    kubernetes.mount_pvc(task, pvc_name=MODELS_PVC, mount_path=MODELS_ROOT)
    for secret, keys in (MLFLOW_SECRET, *secrets):
        kubernetes.use_secret_as_env(task, secret_name=secret, secret_key_to_env=keys, optional=True)
    kubernetes.set_security_context(task, run_as_user=UID, run_as_group=UID, run_as_non_root=True)
    return task


def build(target: str = "local"):
    """The pipeline for ``target`` ("local" or "cluster"); both take the same parameters."""
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    cluster = target == "cluster"

    @dsl.pipeline(name="loganalyzer-cpt-finetune",
                  description="Chunk Loghub logs, synthesize data with a teacher LLM, CPT + LoRA SFT, evaluate"
                              + (", deploy." if cluster else "."))
    def cpt_finetune(
        logs: list = [f"{DATA_ROOT}/logs"],
        run_dir: str = "",
        base_model_name: str = "meta-llama/Llama-3.1-8B-Instruct",
        teacher: str = "auto",
        teacher_base_url: str = "",
        teacher_model: str = SynthesizeConfig.default("model"),
        tasks: list = SynthesizeConfig.default("tasks"),
        max_chunks_per_file: int = 300,  # the seed's cap per log file (0: every chunk)
        chunk_min_lines: int = ChunkConfig.default("min_lines"),
        chunk_max_lines: int = ChunkConfig.default("max_lines"),
        synth_limit: int = 0,  # 0: every chunk
        synth_concurrency: int = SynthesizeConfig.default("concurrency"),
        synth_max_tokens: int = SynthesizeConfig.default("max_tokens"),
        redact_mode: str = SynthesizeConfig.default("redact"),
        nlplog: list = BuildDatasetsConfig.default("nlplog"),
        loghub_structured: list = BuildDatasetsConfig.default("loghub_structured"),
        val_size: int = BuildDatasetsConfig.default("val_size"),
        test_size: int = BuildDatasetsConfig.default("test_size"),
        max_seq_length: int = BuildDatasetsConfig.default("max_seq_length"),
        cpt_recipe: str = "cpt_full_zero3",
        sft_recipe: str = "sft_lora",
        cpt_overrides: dict = {},
        sft_overrides: dict = {},
        cpt_nodes: int = LaunchConfig.default("nodes"),
        cpt_nproc_per_node: int = LaunchConfig.default("nproc_per_node"),
        sft_nodes: int = LaunchConfig.default("nodes"),
        sft_nproc_per_node: int = 4,
        sft_engine: str = LaunchConfig.default("engine"),
        train_image: str = TRAIN_IMAGE,
        namespace: str = "",
        serve_name: str = "loganalyzer-chat",
        serve_lora: bool = False,
        serve_deployment_mode: str = DeployConfig.default("deployment_mode"),
        eval_max_new_tokens: int = EvaluateConfig.default("max_new_tokens"),
        eval_limit: int = 0,  # 0: every test sample
        judge_endpoint: str = "",
        judge_model: str = "",
        replicates: int = 1,
        seed: int = SEED,
        tracking_uri: str = "http://loganalyzer-mlflow:5000" if cluster else "",
        experiment: str = "loganalyzer",
    ):
        def task(t: dsl.PipelineTask, name: str | None = None, secrets=()) -> dsl.PipelineTask:
            if name:
                t.set_display_name(name)
            return _on_cluster(t, *secrets) if cluster else t

        track = dict(tracking_uri=tracking_uri, experiment=experiment)
        where = task(paths(run_dir=run_dir, run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, data_root=DATA_ROOT,
                           models_root=MODELS_ROOT))
        rdir, mdir, prefix = (where.outputs[k] for k in ("run_dir", "models_dir", "job_prefix"))
        parent = task(start(run_name="cpt-finetune", kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                            params={"base_model": base_model_name, "teacher": teacher, "teacher_model": teacher_model,
                                    "cpt_recipe": cpt_recipe, "sft_recipe": sft_recipe}, **track), "mlflow-start")
        pid = parent.output
        chunks = task(chunk(logs=logs, run_dir=rdir, max_chunks_per_file=max_chunks_per_file, seed=seed,
                            min_lines=chunk_min_lines, max_lines=chunk_max_lines, parent_run_id=pid, **track))
        # secrets removed and personal data pseudonymised before any chunk leaves for the teacher (redact_mode)
        safe = task(redact(chunks=chunks.output, run_dir=rdir, mode=redact_mode, teacher=teacher,
                           teacher_base_url=teacher_base_url, parent_run_id=pid, **track))
        base = task(base_model(base_model=base_model_name, run_dir=rdir, chunks=safe.output), secrets=[HF_SECRET])
        synth = task(synthesize(chunks=safe.output, run_dir=rdir, teacher=teacher,
                                teacher_base_url=teacher_base_url, teacher_model=teacher_model, tasks=tasks,
                                concurrency=synth_concurrency, max_tokens=synth_max_tokens, limit=synth_limit,
                                redact=redact_mode, parent_run_id=pid, **track), secrets=[TEACHER_SECRET])
        data = task(build_datasets(chunks=safe.output, synth=synth.output, run_dir=rdir, tokenizer=base.output,
                                   nlplog=nlplog, loghub_structured=loghub_structured, val_size=val_size,
                                   test_size=test_size, max_seq_length=max_seq_length, parent_run_id=pid,
                                   **track), secrets=[HF_SECRET])

        def trainer(*, name, job, output_dir, seed, recipe, model, train_file, eval_file, overrides, nodes, nproc,
                    engine, parent_run_id):
            # every trained model is a version of loganalyzer-<name> in the MLflow Model Registry
            common = dict(recipe=recipe, model=model, train_file=train_file, eval_file=eval_file,
                          output_dir=output_dir, overrides=overrides, seed=seed, register_as=f"loganalyzer-{name}",
                          parent_run_id=parent_run_id, **track)
            if cluster:
                return task(launch_training(name=job, image=train_image, nodes=nodes, nproc_per_node=nproc,
                                            namespace=namespace, engine=engine, models_pvc=MODELS_PVC,
                                            models_root=MODELS_ROOT, **common), name)
            return task(train(**common), name)

        def replicated_sft(name: str, model):
            """SFT once per replicate (seeds seed, seed+1, ...) on PyTorchJobs or (sft_engine="ray") KubeRay RayJobs.
            Each loop item is a whole training run: kfp 2.17's local runner hands the loop item to every outer
            task output a ParallelFor body reads (create_parameter_loop_iteration_task_spec), so the body reads
            only its item and pipeline parameters."""
            runs = task(replicate_runs(name=name, model=model, datasets=data.output, models_dir=mdir,
                                       job_prefix=prefix, seed=seed, replicates=replicates, parent_run_id=pid))
            with dsl.ParallelFor(runs.output) as run:
                trained = trainer(name=name.replace("_", "-"), job=run.job, output_dir=run.output_dir,
                                  seed=run.seed, recipe=sft_recipe, model=run.model, train_file=run.train_file,
                                  eval_file=run.eval_file, overrides=sft_overrides, nodes=sft_nodes,
                                  nproc=sft_nproc_per_node, engine=sft_engine, parent_run_id=run.parent_run_id)
            return runs, trained

        cpt = trainer(name="cpt", job=f"{prefix}-cpt", output_dir=f"{mdir}/cpt", seed=seed, recipe=cpt_recipe,
                      model=base.output, train_file=f"{data.output}/cpt_train.jsonl", eval_file="",
                      overrides=cpt_overrides, nodes=cpt_nodes, nproc=cpt_nproc_per_node, engine="pytorchjob",
                      parent_run_id=pid)
        cpt_sft_runs, cpt_sft = replicated_sft("cpt_sft", cpt.output)
        sft_runs, sft = replicated_sft("sft", base.output)
        report = task(evaluate(test=f"{data.output}/sft_test.jsonl", base=base.output,
                               sft=dsl.Collected(sft.output), cpt_sft=dsl.Collected(cpt_sft.output),
                               sft_runs=sft_runs.output, cpt_sft_runs=cpt_sft_runs.output, run_dir=rdir,
                               max_new_tokens=eval_max_new_tokens, limit=eval_limit, judge_endpoint=judge_endpoint,
                               judge_model=judge_model, parent_run_id=pid, **track),
                      secrets=[HF_SECRET, JUDGE_SECRET])
        task(finish(parent_run_id=pid, report_file=report.outputs["Output"], **track))
        if cluster:
            report.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(1)
            # the merged cpt_sft model, or (serve_lora) its adapter on top of the CPT model it was trained from
            task(deploy(name=serve_name, replicates=cpt_sft_runs.output, models_pvc=MODELS_PVC,
                        models_root=MODELS_ROOT,
                        namespace=namespace, serve_lora=serve_lora, lora_base_dir=cpt.output,
                        deployment_mode=serve_deployment_mode).after(report))

    return cpt_finetune


def compile_cluster(path: str) -> str:
    """Write the cluster pipeline as KFP's Kubernetes manifests (Pipeline + PipelineVersion, v2beta1); return the
    PipelineVersion's name.

    The name carries a digest of the version's spec: KFP's webhook refuses a changed spec under an existing
    PipelineVersion name, so a changed pipeline (or another registry) must be a new version to be re-applied.
    """
    import hashlib
    import json
    import re
    from pathlib import Path

    import yaml
    from kfp import compiler
    from kfp.compiler.compiler_utils import KubernetesManifestOptions

    pending = "loganalyzer-cpt-finetune-pending-version"
    compiler.Compiler().compile(
        build("cluster"), path, kubernetes_manifest_format=True,
        kubernetes_manifest_options=KubernetesManifestOptions(
            pipeline_name="loganalyzer-cpt-finetune", pipeline_display_name="loganalyzer: CPT + LoRA SFT",
            pipeline_version_name=pending, include_pipeline_manifest=True))
    text = Path(path).read_text()
    version = next(d for d in yaml.safe_load_all(text) if d["kind"] == "PipelineVersion")
    content = {k: v for k, v in version["spec"].items() if k != "displayName"}
    digest = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:10]
    tag = re.sub(r"[^a-z0-9]+", "-", TAG.lower()).strip("-")  # a DNS label: 0.1.0 -> 0-1-0, 1.0+rc1 -> 1-0-rc1
    name = f"loganalyzer-cpt-finetune-{tag[:24].rstrip('-')}-{digest}"  # at most 63 characters
    if text.count(pending) != 2:  # KFP's compiler changed where it writes the version name
        raise RuntimeError(f"expected the version name twice (metadata.name, spec.displayName) in {path}")
    Path(path).write_text(text.replace(pending, name))
    return name
