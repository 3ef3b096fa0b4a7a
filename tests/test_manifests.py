"""Every shipped Kubernetes object: kustomize overlays, the Helm chart (default and CI values), validated against
Kubernetes 1.30 schemas and the upstream CRDs, dry-run applied to a real API server, hardened, and RBAC-checked."""

from __future__ import annotations

import copy
import filecmp
import json
import shutil

import pytest
import yaml
from kube_helpers import (
    ROOT,
    helm,
    helm_template,
    kustomize,
    pod_specs,
    pod_templates,
    restricted_violations,
    security_problems,
    validate,
)

from loganalyzer.k8s import to_dict
from loganalyzer.launch import LaunchConfig, pytorchjob, rayjob, template

MANIFESTS = ROOT / "manifests"
CHART = ROOT / "charts" / "loganalyzer"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
CONFIGS = ROOT / "jobs" / "configs"


COMPONENTS = ("cpt-2x4", "ray-sft", "serving")  # optional, commented out in overlays/production


@pytest.fixture(scope="module")
def renderings(tmp_path_factory) -> dict[str, list[dict]]:
    out = {name: kustomize(MANIFESTS / name) for name in ("base", "overlays/dev", "overlays/production")}
    # production with each optional component switched on, the way its kustomization's comment says
    for component in COMPONENTS:
        copy = tmp_path_factory.mktemp(component) / "manifests"
        shutil.copytree(MANIFESTS, copy)
        kustomization = copy / "overlays" / "production" / "kustomization.yaml"
        text = kustomization.read_text()
        line = f"  # - ../../components/{component}\n"
        assert line in text, f"overlays/production lists no commented {component} component"
        kustomization.write_text(text.replace(line, f"  - ../../components/{component}\n"))
        out[f"overlays/production+{component}"] = kustomize(copy / "overlays" / "production")
    out["chart"] = helm_template(CHART)
    for values in CI_VALUES:
        out[f"chart+{values.name}"] = helm_template(CHART, "-f", str(values))
    return out


RENDERINGS = ["base", "overlays/dev", "overlays/production", *[f"overlays/production+{c}" for c in COMPONENTS],
              "chart", *[f"chart+{v.name}" for v in CI_VALUES]]


def by_kind(docs, kind):
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


@pytest.mark.parametrize("name", RENDERINGS)
def test_schemas_and_security(renderings, name):
    docs = renderings[name]
    assert docs, name
    assert validate(docs) == []
    assert [p for d in docs for p in security_problems(d)] == []


# Each server's measured stop, SIGTERM to gone, in seconds: the chatbot image (test_image_runs: under 8 s), the
# MLflow server (test_tracking's fixture: under 10 s) and the predictor (KServe's runtime, not ours: unmeasured, so
# the bound is a reply of 1,000 tokens at 25 tokens/s finishing). A grace period must exceed it, or a rollout
# SIGKILLs a server still stopping.
STOP_BOUNDS_S = {"chatbot": 8, "tracking": 10, "serving": 40}


@pytest.mark.parametrize("name", RENDERINGS)
def test_every_server_gets_a_grace_period_above_its_stop_time(renderings, name):
    servers = [d for d in renderings[name] if d["kind"] in ("Deployment", "InferenceService")]
    assert servers, name  # MLflow at least
    for doc in servers:
        (pod,) = pod_specs(doc)
        component = doc["metadata"]["labels"]["app.kubernetes.io/component"]
        grace = pod.get("terminationGracePeriodSeconds")
        assert grace is not None and STOP_BOUNDS_S[component] < grace <= 120, (doc["metadata"]["name"], grace)


def test_batch_pods_stay_out_of_an_istio_mesh(renderings):
    """Multi-user Kubeflow injects Istio sidecars in profile namespaces, and a sidecar outlives the main container,
    so a Job's or a PyTorchJob replica's pod would never complete: every run-to-completion pod opts out."""
    from loganalyzer.launch import rayjob

    docs = [d for name in RENDERINGS for d in renderings[name]]
    docs += [to_dict(pytorchjob(LaunchConfig(name="x", recipe="cpt_full_zero3", nodes=2))),
             rayjob(LaunchConfig(name="y", recipe="sft_lora", engine="ray"))]
    templates = [(d["kind"], d["metadata"]["name"], t) for d in docs if d["kind"] != "Deployment"  # servers
                 for t in pod_templates(d)]
    assert len({kind for kind, *_ in templates}) == 3
    for kind, name, t in templates:
        assert (t["metadata"].get("annotations") or {}).get("sidecar.istio.io/inject") == "false", (kind, name)


def test_validation_catches_errors(renderings):
    """The checks above can fail: a typo'd field, a wrong type, a root container are all reported."""
    docs = yaml.safe_load_all(yaml.safe_dump_all(renderings["base"]))
    docs = list(docs)
    cpt = by_kind(docs, "PyTorchJob")["loganalyzer-cpt"]
    cpt["spec"]["pytorchReplicaSpecs"]["Master"]["replicas"] = "one"
    cpt["spec"]["runPolicy"]["backofLimit"] = 3
    deploy = by_kind(docs, "Deployment")["loganalyzer-mlflow"]
    deploy["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    deploy["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] = False
    del deploy["spec"]["template"]["spec"]["containers"][0]["securityContext"]["runAsNonRoot"]
    errors = validate(docs)
    assert any("replicas" in e and "integer" in e for e in errors), errors
    assert any("backofLimit" in e for e in errors), errors
    assert any("imagePullPolcy" in e for e in errors), errors
    assert any("runAsNonRoot" in p for p in security_problems(deploy))


def test_base_contents(renderings):
    docs = renderings["base"]
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {"loganalyzer"}
    jobs = by_kind(docs, "Job")
    assert set(jobs) == {f"loganalyzer-{s}" for s in ("chunk", "redact", "synthesize", "build-datasets", "evaluate")}
    # the teacher and the datasets get the redacted chunks
    args = {n: j["spec"]["template"]["spec"]["containers"][0]["args"] for n, j in jobs.items()}
    assert args["loganalyzer-redact"][:4] == ["--chunks", "$(RUN_DIR)/chunks.jsonl", "--out",
                                              "$(RUN_DIR)/chunks.redacted.jsonl"]
    assert args["loganalyzer-synthesize"][1] == args["loganalyzer-build-datasets"][1] == \
        "$(RUN_DIR)/chunks.redacted.jsonl"
    assert all(j["spec"]["suspend"] is True for j in jobs.values())
    pvcs = by_kind(docs, "PersistentVolumeClaim")
    assert {"loganalyzer-data", "loganalyzer-models", "loganalyzer-mlflow"} <= set(pvcs)
    cms = by_kind(docs, "ConfigMap")
    assert yaml.safe_load(cms["loganalyzer-recipes"]["data"]["cpt_full_zero3.yaml"])["deepspeed"] == "zero3"
    assert json.loads(cms["loganalyzer-deepspeed"]["data"]["zero3.json"])["zero_optimization"]["stage"] == 3
    assert not by_kind(docs, "Secret") and not by_kind(docs, "ClusterRole")


def test_cpt_pytorchjob_topologies(renderings):
    for name, nodes, nproc in (("base", 1, 8), ("overlays/production", 1, 8),
                               ("overlays/production+cpt-2x4", 2, 4), ("chart", 1, 8), ("chart+ci-values.yaml", 2, 4)):
        cpt = next(d for d in renderings[name] if d["kind"] == "PyTorchJob" and d["metadata"]["name"].endswith("cpt"))
        replicas = cpt["spec"]["pytorchReplicaSpecs"]
        assert int(cpt["spec"]["nprocPerNode"]) == nproc, name
        # one node: a Master; more: Workers only, with a c10d rendezvous (no init container; see below)
        assert list(replicas) == (["Master"] if nodes == 1 else ["Worker"]), name
        (only,) = replicas.values()
        assert only["replicas"] == nodes and only["restartPolicy"] == "OnFailure", name
        if nodes > 1:
            assert cpt["spec"]["elasticPolicy"] == {"rdzvBackend": "c10d", "minReplicas": nodes,
                                                    "maxReplicas": nodes}, name
        else:
            assert "elasticPolicy" not in cpt["spec"], name
        if name.startswith("overlays/production"):  # components/gpu-nodes, also after cpt-2x4 moved the replica
            assert only["template"]["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}, name
            evaluate = by_kind(renderings[name], "Job")["loganalyzer-evaluate"]["spec"]["template"]["spec"]
            assert evaluate["nodeSelector"] == {"nvidia.com/gpu.present": "true"}, name
        for r in replicas.values():
            pod = r["template"]["spec"]
            c = pod["containers"][0]
            assert c["name"] == "pytorch" and c["command"] == ["torchrun", "--module", "loganalyzer.train"]
            assert {"name": "PYTORCH_CUDA_ALLOC_CONF", "value": "expandable_segments:True"} in c["env"], name
            assert c["resources"]["limits"]["nvidia.com/gpu"] == str(nproc)
            shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
            assert shm["emptyDir"]["medium"] == "Memory"
            assert c["args"][:2] == ["--config", "cpt_full_zero3"]


def test_ray_sft_component(renderings):
    """SFT on KubeRay: the same loganalyzer.train entrypoint with engine=ray, one GPU per Ray worker."""
    (job,) = [d for d in renderings["overlays/production+ray-sft"] if d["kind"] == "RayJob"]
    assert job["spec"]["suspend"] is True and job["metadata"]["namespace"] == "loganalyzer"
    entry = job["spec"]["entrypoint"].split()
    assert entry[:5] == ["python", "-m", "loganalyzer.train", "--config", "sft_lora"]
    assert {"engine=ray", "ray_workers=4", "ray_use_gpu=true"} <= set(entry)
    from loganalyzer.config import parse_config
    from loganalyzer.train import TrainConfig

    cfg = parse_config(TrainConfig, "train", entry[3:])  # the entrypoint's arguments are a valid config
    workers = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    assert cfg.engine == "ray" and cfg.ray_workers == workers["replicas"] == workers["maxReplicas"]
    gpus = workers["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
    assert cfg.ray_use_gpu and gpus == "1"


def test_serving_component_matches_the_deploy_step(renderings):
    """The shipped InferenceService is what `loganalyzer deploy` builds, and the chatbot points at it."""
    from loganalyzer.chat import ChatConfig
    from loganalyzer.deploy import DeployConfig, inference_service
    from loganalyzer.k8s import to_dict

    docs = renderings["overlays/production+serving"]
    (isvc,) = [d for d in docs if d["kind"] == "InferenceService"]
    built = to_dict(inference_service(DeployConfig(name=isvc["metadata"]["name"],
                                                   storage_uri="pvc://loganalyzer-models/default/cpt_sft")))
    assert isvc["spec"] == built["spec"]
    chatbot = by_kind(docs, "Deployment")["loganalyzer-chatbot"]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in chatbot["env"]}
    # Standard mode: the Service <name>-predictor on port 80 (kserve service_reconciler.go), in the chatbot's own
    # namespace, whichever the overlay sets
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Standard"
    assert env["LOGANALYZER_ENDPOINT"] == f"http://{isvc['metadata']['name']}-predictor/openai/v1"
    assert f"--model_name={env['LOGANALYZER_MODEL']}" in isvc["spec"]["predictor"]["model"]["args"]
    assert chatbot["image"].startswith("registry.example.com/loganalyzer/loganalyzer-chatbot:")
    assert env["LOGANALYZER_CHAT_REDACT"] == "auto" and ChatConfig.model_fields["redact"].default == "auto"
    # the pod starts while the model loads (locally the default is to exit 2 at once)
    assert ChatConfig(require_endpoint=env["LOGANALYZER_CHAT_REQUIRE_ENDPOINT"]).require_endpoint is False
    # the NetworkPolicy leaves the serving pods reachable from the ingress gateway / activator
    (policy,) = by_kind(docs, "NetworkPolicy").values()
    assert {"key": "app.kubernetes.io/component", "operator": "NotIn", "values": ["serving", "chatbot"]} in \
        policy["spec"]["podSelector"]["matchExpressions"]


def test_chart_serving_matches_the_deploy_step_in_lora_mode(renderings):
    from loganalyzer.deploy import DeployConfig, inference_service
    from loganalyzer.k8s import to_dict

    values = yaml.safe_load((CHART / "ci" / "ci-values.yaml").read_text())
    docs = renderings["chart+ci-values.yaml"]
    (isvc,) = [d for d in docs if d["kind"] == "InferenceService"]
    built = to_dict(inference_service(DeployConfig(
        name=isvc["metadata"]["name"], storage_uri=f"pvc://loganalyzer-models/{values['serving']['modelPath']}",
        adapter_uri=f"pvc://loganalyzer-models/{values['serving']['adapterPath']}",
        min_replicas=values["serving"]["minReplicas"], max_replicas=values["serving"]["maxReplicas"],
        node_selector=values["placement"]["gpu"]["nodeSelector"],
        tolerations=values["placement"]["gpu"]["tolerations"])))
    assert isvc["spec"] == built["spec"]
    chatbot = by_kind(docs, "Deployment")["loganalyzer-chatbot"]["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "LOGANALYZER_ENDPOINT", "value": "http://loganalyzer-chat-predictor.loganalyzer.svc.cluster."
            "local/openai/v1"} in chatbot["env"]
    assert {"name": "LOGANALYZER_CHAT_REDACT", "value": values["chatbot"].get("redact", "auto")} in chatbot["env"]
    assert {"name": "LOGANALYZER_CHAT_REQUIRE_ENDPOINT", "value": "false"} in chatbot["env"]


def _knative_rejects(pod: dict) -> list[str]:
    """Fields Knative Serving's webhook refuses with "must not set the field(s)", feature flags at their defaults
    (knative/serving v0.48 pkg/apis/serving/fieldmask.go: PodSecurityContextMask allows nothing unless
    kubernetes.podspec-securitycontext is enabled; SecurityContextMask allows capabilities (drop; add is off),
    readOnlyRootFilesystem, runAsUser, runAsGroup, runAsNonRoot, allowPrivilegeEscalation, seccompProfile and
    privileged=false; pkg/apis/config/features.go: emptyDir volumes on)."""
    out = [f"pod securityContext.{k}" for k in pod.get("securityContext") or {}]
    # kubernetes.podspec-nodeselector, -tolerations, -affinity: Disabled by default (features.go)
    out += [f"pod {k}" for k in ("nodeSelector", "tolerations", "affinity") if pod.get(k)]
    # PodSpecMask never allows it: a revision's pods get its timeoutSeconds as their grace period
    out += ["pod terminationGracePeriodSeconds"] if "terminationGracePeriodSeconds" in pod else []
    allowed = {"capabilities", "readOnlyRootFilesystem", "runAsUser", "runAsGroup", "runAsNonRoot",
               "allowPrivilegeEscalation", "seccompProfile", "privileged"}
    for c in pod["containers"]:
        sc = c.get("securityContext") or {}
        out += [f"{c['name']}: securityContext.{k}" for k in sc if k not in allowed]
        out += [f"{c['name']}: capabilities.add" for _ in (sc.get("capabilities") or {}).get("add") or []]
        if sc.get("privileged"):
            out.append(f"{c['name']}: privileged")
    out += [f"volume {v['name']}" for v in pod.get("volumes", []) if set(v) - {"name", "emptyDir", "configMap",
                                                                           "secret", "projected"}]
    return out


def test_knative_mode_sets_only_what_knative_accepts(renderings):
    from loganalyzer.deploy import DeployConfig, inference_service
    from loganalyzer.k8s import to_dict

    def isvc(mode):
        return to_dict(inference_service(DeployConfig(name="c", storage_uri="pvc://m/x", deployment_mode=mode)))

    standard, knative = isvc("Standard"), isvc("Knative")
    assert {"pod securityContext.runAsUser", "pod terminationGracePeriodSeconds"} <= set(
        _knative_rejects(pod_specs(standard)[0])), "the rule must catch what Knative refuses"
    assert _knative_rejects(pod_specs(knative)[0]) == []
    assert knative["metadata"]["annotations"] == {"serving.kserve.io/deploymentMode": "Knative"}
    assert knative["spec"]["predictor"]["scaleMetric"] == "concurrency"
    # Standard: a fixed replica count and no HPA; KServe's HPA would scale a GPU server on CPU load
    # (hpa_reconciler.go: only cpu and memory map to a metric; "concurrency" gives an HPA with none)
    assert standard["metadata"]["annotations"] == {"serving.kserve.io/deploymentMode": "Standard",
                                                   "serving.kserve.io/autoscalerClass": "none"}
    assert "scaleMetric" not in standard["spec"]["predictor"]
    with pytest.raises(ValueError, match="fixed number of replicas"):
        DeployConfig(name="c", storage_uri="pvc://m/x", max_replicas=3)
    assert DeployConfig(name="c", storage_uri="pvc://m/x", deployment_mode="Knative", min_replicas=0).knative
    result = helm("template", "x", str(CHART), "--set", "serving.enabled=true", "--set", "serving.maxReplicas=3",
                  check=False)
    assert result.returncode != 0 and "fixed number of replicas" in result.stderr
    placed = to_dict(inference_service(DeployConfig(name="c", storage_uri="pvc://m/x", deployment_mode="Knative",
                                                    node_selector={"pool": "gpu"})))
    assert _knative_rejects(pod_specs(placed)[0]) == ["pod nodeSelector"]  # what the deploy warning is about
    for doc in (standard, knative):  # both modes: Pod Security restricted, UID 1000, read-only root
        assert security_problems(doc) == []
    # the chart renders the same object in Knative mode, and points the chatbot at its address
    docs = helm_template(CHART, "--set", "serving.enabled=true", "--set", "chatbot.enabled=true",
                         "--set", "serving.deploymentMode=Knative")
    (chart_isvc,) = [d for d in docs if d["kind"] == "InferenceService"]
    assert chart_isvc["spec"] == to_dict(inference_service(DeployConfig(
        name="loganalyzer-chat", storage_uri="pvc://loganalyzer-models/default/cpt_sft",
        deployment_mode="Knative")))["spec"]
    chatbot = by_kind(docs, "Deployment")["loganalyzer-chatbot"]["spec"]["template"]["spec"]["containers"][0]
    # <isvc>-predictor exists in both modes: a Service (Standard) or the predictor's Knative Service
    assert {"name": "LOGANALYZER_ENDPOINT",
            "value": "http://loganalyzer-chat-predictor.loganalyzer.svc.cluster.local/openai/v1"} in chatbot["env"]


# kserve v0.20 config/runtimes/kserve-huggingfaceserver.yaml: the runtime container's own resources
HF_RUNTIME_RESOURCES = {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"cpu": "1", "memory": "2Gi"}}


def _merged_resources(ours: dict) -> dict:
    """kserve pkg/utils/container_merge.go MergeContainerWithPatch: a strategic merge of the InferenceService's
    container onto the runtime's; requests and limits are maps, merged key by key."""
    return {k: {**HF_RUNTIME_RESOURCES[k], **(ours.get(k) or {})} for k in HF_RUNTIME_RESOURCES}


@pytest.mark.parametrize("source", ["deploy", "overlays/production+serving", "chart+ci-values.yaml"])
def test_predictor_resources_override_the_runtime_limits(renderings, source):
    from loganalyzer.deploy import DeployConfig, inference_service
    from loganalyzer.k8s import to_dict

    if source == "deploy":
        isvc = to_dict(inference_service(DeployConfig(name="c", storage_uri="pvc://m/x")))
    else:
        (isvc,) = [d for d in renderings[source] if d["kind"] == "InferenceService"]
    merged = _merged_resources(isvc["spec"]["predictor"]["model"]["resources"])
    # an 8B model in bf16 is 16 GB of weights: vLLM loads it through host memory, with a few CPUs
    assert _gib(merged["limits"]["memory"]) >= 48 and float(merged["limits"]["cpu"]) >= 4, merged
    assert merged["limits"]["nvidia.com/gpu"] == merged["requests"]["nvidia.com/gpu"] == "1"


def _gib(quantity: str) -> float:
    units = {"Gi": 1, "Mi": 1 / 1024, "Ti": 1024}
    return float(quantity[:-2]) * units[quantity[-2:]]


def test_dev_overlay_runs_tiny_cpu_recipes(renderings):
    docs = renderings["overlays/dev"]
    for job in by_kind(docs, "PyTorchJob").values():
        c = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
        assert "resources" not in c and job["spec"]["nprocPerNode"] == "1"
        assert c["args"][1].endswith("_tiny_cpu")
    assert by_kind(docs, "PersistentVolumeClaim")["loganalyzer-data"]["spec"]["accessModes"] == ["ReadWriteOnce"]


def test_production_mlflow_uses_postgres_and_s3_secrets(renderings):
    for name in ("overlays/production", "chart+ci-values.yaml"):
        docs = renderings[name]
        deploy = next(iter(by_kind(docs, "Deployment").values()))
        c = deploy["spec"]["template"]["spec"]["containers"][0]
        assert {e["name"] for e in c.get("env", [])} == {"HOME"}, name
        assert c["envFrom"] == [{"secretRef": {"name": "loganalyzer-mlflow-backend"}}]
        assert deploy["spec"]["replicas"] == 2
        assert not [p for p in by_kind(docs, "PersistentVolumeClaim") if p.endswith("mlflow")]


def _values_of(obj, key: str) -> set:
    """Every value of ``key`` at any depth of ``obj``."""
    if isinstance(obj, dict):
        return {v for k, v in obj.items() if k == key and not isinstance(v, (dict, list))} | \
            {x for v in obj.values() for x in _values_of(v, key)}
    return {x for v in obj for x in _values_of(v, key)} if isinstance(obj, list) else set()


def test_cluster_constants_are_the_packages(renderings):
    """The PVC names, their mount paths and the UID in manifests/ and the chart are loganalyzer.k8s's (what the
    launchers and the pipeline use)."""
    from loganalyzer import k8s

    pipeline_claims = {k8s.DATA_PVC, k8s.MODELS_PVC}
    for name in ("base", "chart"):
        docs = renderings[name]
        pvcs = set(by_kind(docs, "PersistentVolumeClaim"))
        assert pipeline_claims <= pvcs, name
        pods = [t for d in docs for t in pod_templates(d)]
        claims = _values_of(pods, "claimName")
        assert claims <= pvcs and pipeline_claims <= claims, (name, claims)
        assert _values_of(pods, "runAsUser") == {k8s.UID}, name
        mounts = {m["mountPath"] for pod in pods for c in pod["spec"]["containers"]
                  for m in c.get("volumeMounts", []) if m["name"] in ("data", "models")}
        assert mounts == {k8s.DATA_MOUNT, k8s.MODELS_MOUNT}, (name, mounts)


def test_chart_renders_what_kustomize_renders(renderings):
    def kinds_names(docs, prefix):
        return {(d["kind"], d["metadata"]["name"].removeprefix(prefix)) for d in docs if d["kind"] != "Namespace"}

    assert kinds_names(renderings["chart"], "loganalyzer-") == kinds_names(renderings["base"], "loganalyzer-")


def test_launcher_jobs_are_the_manifests_with_only_the_runs_fields():
    """Runtime as data: `loganalyzer launch` (the pipeline) creates the shipped manifests' jobs, with only the
    run's fields set (name, recipe and args, image, topology); the manifest's example-run variables go."""
    manifest = template("pytorchjob")
    launched = to_dict(pytorchjob(LaunchConfig(name="loganalyzer-cpt", recipe="cpt_full_zero3",
                                               image="loganalyzer-train", args=["seed=7"])))
    expected = copy.deepcopy(manifest["spec"])
    expected["runPolicy"].pop("suspend")
    pod = expected["pytorchReplicaSpecs"]["Master"]["template"]
    pod["metadata"]["labels"] |= {"app.kubernetes.io/managed-by": "loganalyzer", "loganalyzer/job": "loganalyzer-cpt"}
    (container,) = pod["spec"]["containers"]
    container["args"] = ["--config", "cpt_full_zero3", "seed=7"]
    container["env"] = [e for e in container["env"] if e["name"] not in ("RUN_ID", "RUN_DIR", "BASE_MODEL")]
    assert launched["spec"] == expected
    assert launched["metadata"] == {"name": "loganalyzer-cpt", "namespace": "loganalyzer",
                                    "labels": {"app.kubernetes.io/component": "train",
                                               "app.kubernetes.io/name": "loganalyzer",
                                               "app.kubernetes.io/managed-by": "loganalyzer"}}
    assert LaunchConfig.default("nproc_per_node") == int(manifest["spec"]["nprocPerNode"])

    ray_manifest = template("ray")
    ray = rayjob(LaunchConfig(name="loganalyzer-sft-ray", recipe="sft_lora", engine="ray", nproc_per_node=4,
                              image="loganalyzer-train", args=["seed=7"]))
    assert ray["spec"]["entrypoint"] == ("python -m loganalyzer.train --config sft_lora engine=ray ray_workers=4 "
                                         "ray_use_gpu=true seed=7")
    for spec in (ray["spec"], ray_manifest["spec"]):
        spec.pop("entrypoint"), spec.pop("suspend", None)
        for pod in pod_templates({"kind": "RayJob", "spec": spec}):
            pod["metadata"]["labels"].pop("app.kubernetes.io/managed-by", None)
            pod["metadata"]["labels"].pop("loganalyzer/job", None)
    assert ray["spec"] == ray_manifest["spec"]


def _trainer_pods(job: dict) -> list[dict]:
    """A trainer job's pod specs in a comparable form: lists of named items sorted by name, empty scheduling
    fields dropped, and without what only names an example run (its args, entrypoint and their variables)."""
    pods = []
    for template_ in pod_templates(job):
        spec = copy.deepcopy(template_["spec"])
        for key in ("nodeSelector", "tolerations"):
            if not spec.get(key):
                spec.pop(key, None)
        spec["volumes"] = sorted(spec.get("volumes", []), key=lambda v: v["name"])
        for c in spec["containers"]:
            c.pop("args", None)
            c["image"] = c["image"].rsplit("/", 1)[-1].split(":")[0]  # kustomize and Helm name the registry, tag
            c["volumeMounts"] = sorted(c.get("volumeMounts", []), key=lambda m: m["name"])
            c["env"] = sorted((e for e in c.get("env", []) if e["name"] not in EXAMPLE_RUN_VARS),
                              key=lambda e: e["name"])
        pods.append(spec)
    return pods


EXAMPLE_RUN_VARS = ("RUN_ID", "RUN_DIR", "BASE_MODEL", "SFT_FROM", "SFT_NAME")


def test_chart_trainer_jobs_are_the_manifests(renderings):
    """The chart renders the trainer jobs itself (Helm cannot read manifests/); they must stay the manifests'
    (the one source the launcher also uses), pod for pod."""
    ray_chart = helm_template(CHART, "--set", "raySft.enabled=true")  # with every other value at its default
    for kind, manifests, chart in (("PyTorchJob", renderings["base"], renderings["chart"]),
                                   ("RayJob", renderings["overlays/production+ray-sft"], ray_chart)):
        manifests, chart = by_kind(manifests, kind), by_kind(chart, kind)
        assert manifests and set(chart) == set(manifests), kind
        for name, job in manifests.items():
            assert _trainer_pods(chart[name]) == _trainer_pods(job), name
            for key in ("runPolicy", "nprocPerNode", "backoffLimit", "ttlSecondsAfterFinished",
                        "shutdownAfterJobFinishes"):
                assert chart[name]["spec"].get(key) == job["spec"].get(key), (name, key)
            if kind == "RayJob":  # the worker groups but for their pods, compared above
                groups = [[{k: v for k, v in g.items() if k != "template"}
                           for g in j["spec"]["rayClusterSpec"]["workerGroupSpecs"]] for j in (chart[name], job)]
                assert groups[0] == groups[1], name


def test_sft_pytorchjob_is_the_cpt_one_with_its_run_and_gpus(renderings):
    """manifests/base holds two PyTorchJobs (kustomize has no way to derive one object from another): the SFT one
    must be the CPT one (the launcher's template) but for its example run and GPU count."""
    jobs = by_kind(renderings["base"], "PyTorchJob")
    cpt, sft = (_trainer_pods(jobs[f"loganalyzer-{n}"]) for n in ("cpt", "sft"))
    for pods in (cpt, sft):
        for c in pods[0]["containers"]:
            c.pop("resources")
    assert sft == cpt
    rest = [{k: v for k, v in jobs[f"loganalyzer-{n}"]["spec"].items() if k not in ("pytorchReplicaSpecs",
                                                                                  "nprocPerNode")}
            for n in ("cpt", "sft")]
    assert rest[0] == rest[1]


def test_launcher_sets_the_runs_resources_and_scheduling():
    cfg = LaunchConfig(name="x", recipe="sft_lora", nodes=2, nproc_per_node=4, gpus_per_node=0, cpu="8",
                       memory="32Gi", data_pvc="d", models_pvc="m", shm_size="1Gi", node_selector={"pool": "a"},
                       tolerations=[{"key": "k", "operator": "Exists"}], env={"HF_HOME": "/x", "NEW": "1"},
                       secrets=["s"], config_maps=[], service_account="sa", backoff_limit=0, ttl_s=5)
    job = to_dict(pytorchjob(cfg))
    assert list(job["spec"]["pytorchReplicaSpecs"]) == ["Worker"] and job["spec"]["elasticPolicy"] == {
        "rdzvBackend": "c10d", "minReplicas": 2, "maxReplicas": 2}
    assert job["spec"]["runPolicy"] == {"backoffLimit": 0, "cleanPodPolicy": "None", "ttlSecondsAfterFinished": 5}
    pod = job["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["resources"] == {"requests": {"cpu": "8", "memory": "32Gi"}}  # no GPU
    assert {v["name"]: v.get("persistentVolumeClaim", {}).get("claimName") for v in pod["volumes"]
            if v["name"] in ("data", "models")} == {"data": "d", "models": "m"}
    assert next(v for v in pod["volumes"] if v["name"] == "dshm")["emptyDir"]["sizeLimit"] == "1Gi"
    assert (pod["nodeSelector"], pod["tolerations"], pod["serviceAccountName"]) == (
        {"pool": "a"}, [{"key": "k", "operator": "Exists"}], "sa")
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["HF_HOME"] == "/x" and env["NEW"] == "1" and env["NCCL_DEBUG"] == "WARN"
    assert c["envFrom"] == [{"secretRef": {"name": "s", "optional": True}}]
    # a RayJob: the run's env (MLflow settings, parent run) reaches every pod, the driver's on the head included
    ray = rayjob(cfg.model_copy(update={"engine": "ray", "gpus_per_node": None}))
    pods = pod_templates(ray)
    assert len(pods) == 3
    for pod in pods:
        env = {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}
        assert env["NEW"] == "1" and env["HOME"] == "/tmp", pod["spec"]["containers"][0]["name"]
        assert pod["spec"]["nodeSelector"] == {"pool": "a"}
    head, worker = (ray["spec"]["rayClusterSpec"][k] for k in ("headGroupSpec", "workerGroupSpecs"))
    assert "nvidia.com/gpu" not in str(head) and worker[0]["template"]["spec"]["containers"][0]["resources"][
        "limits"] == {"nvidia.com/gpu": "1"} and worker[0]["replicas"] == 8
    with pytest.raises(TypeError):  # a misspelt toleration field is not dropped on the way
        pytorchjob(cfg.model_copy(update={"tolerations": [{"keyy": "k"}]}))


def _as_the_operator_runs_it(job: dict) -> list[dict]:
    """The pod specs the Training Operator creates for a PyTorchJob: with a Master, every Worker gets its
    init-pytorch container, from its default template (training-operator v1.9.0
    pkg/controller.v1/pytorch/initcontainer.go: image alpine:3.10, resources, an nslookup loop, no securityContext)."""
    replicas = job["spec"]["pytorchReplicaSpecs"]
    pods = []
    for rtype, spec in replicas.items():
        pod = copy.deepcopy(spec["template"]["spec"])
        if "Master" in replicas and rtype == "Worker":
            pod.setdefault("initContainers", []).append({
                "name": "init-pytorch", "image": "alpine:3.10", "imagePullPolicy": "IfNotPresent",
                "resources": {"limits": {"cpu": "100m", "memory": "20Mi"},
                              "requests": {"cpu": "50m", "memory": "10Mi"}},
                "command": ["sh", "-c", f"err=1;for i in $(seq 100); do if nslookup {job['metadata']['name']}-master-0;"
                                        " then err=0 && break; fi;echo waiting for master; sleep 2; done; exit $err"]})
        pods.append(pod)
    return pods


def test_multi_node_pytorchjobs_pass_pod_security_restricted(renderings):
    """The namespace enforces Pod Security "restricted" (manifests/base/namespace.yaml): every pod the operator
    creates from our multi-node jobs must pass it, its injected containers included."""
    jobs = [to_dict(pytorchjob(LaunchConfig(name="x-cpt", recipe="cpt_full_zero3", nodes=2, nproc_per_node=4))),
            by_kind(renderings["overlays/production+cpt-2x4"], "PyTorchJob")["loganalyzer-cpt"],
            by_kind(renderings["chart+ci-values.yaml"], "PyTorchJob")["loganalyzer-cpt"]]
    for job in jobs:
        assert [v for pod in _as_the_operator_runs_it(job) for v in restricted_violations(pod)] == [], job
    # the layout they replace, 1 Master + 1 Worker, is refused because of the injected container
    old = copy.deepcopy(jobs[0])
    old["spec"].pop("elasticPolicy")
    workers = old["spec"]["pytorchReplicaSpecs"]
    workers["Master"] = {**workers["Worker"], "replicas": 1}
    workers["Worker"]["replicas"] = 1
    violations = [v for pod in _as_the_operator_runs_it(old) for v in restricted_violations(pod)]
    assert violations == ["init-pytorch: allowPrivilegeEscalation != false",
                          "init-pytorch: capabilities do not drop ALL"], violations


def test_launcher_objects_are_valid(kube):
    """What `loganalyzer launch` and `deploy` create (PyTorchJob 2 x 4, RayJob, InferenceServices merged and LoRA)
    passes the CRD schemas, hardening and dry-run."""
    from loganalyzer.deploy import DeployConfig, inference_service
    from loganalyzer.k8s import to_dict
    from loganalyzer.launch import rayjob

    docs = [to_dict(pytorchjob(LaunchConfig(name="x-cpt", recipe="cpt_full_zero3", nodes=2, nproc_per_node=4,
                                            tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists"}],
                                            node_selector={"pool": "gpu"}))),
            rayjob(LaunchConfig(name="x-sft", recipe="sft_lora", engine="ray", nproc_per_node=4)),
            to_dict(inference_service(DeployConfig(name="x-chat", storage_uri="pvc://loganalyzer-models/r/cpt_sft"))),
            to_dict(inference_service(DeployConfig(name="x-lora", storage_uri="pvc://loganalyzer-models/r/cpt",
                                                   adapter_uri="pvc://loganalyzer-models/r/cpt_sft/adapter")))]
    assert validate(docs) == []
    assert [p for d in docs for p in security_problems(d)] == []
    kube.ensure_namespace("loganalyzer")
    result = kube.dry_run(docs, "loganalyzer")
    assert result.returncode == 0, result.stderr


def test_configs_copies_identical_to_jobs_configs():
    """manifests/base/configs and the chart's files/configs are copies of jobs/configs (`make manifests`)."""
    for copied in (MANIFESTS / "base" / "configs", CHART / "files" / "configs"):
        for sub in ("", "deepspeed"):
            cmp = filecmp.dircmp(CONFIGS / sub, copied / sub)
            wanted = [f for f in cmp.left_list if f.endswith((".yaml", ".json"))]
            assert sorted(f for f in cmp.right_list if f != "deepspeed") == sorted(wanted), copied / sub
            _, mismatch, errors = filecmp.cmpfiles(CONFIGS / sub, copied / sub, wanted, shallow=False)
            assert mismatch == [] and errors == [], (copied / sub, mismatch, errors)


def test_helm_lint_strict():
    for args in ([], *[["-f", str(v)] for v in CI_VALUES]):
        result = helm("lint", "--strict", str(CHART), *args, check=False)
        assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("bad, message", [
    ("cpt.nodes=0", "cpt.nodes"),
    ("mlflow.backend=mysql", "mlflow.backend"),
    ("storage.data.size=lots", "storage.data.size"),
    ("sft.from=scratch", "sft.from"),
    ("typo=1", "typo"),
    ("images.train.tag=", "images.train.tag"),
])
def test_values_schema_rejects_bad_values(bad, message):
    result = helm("template", "x", str(CHART), "--set", bad, check=False)
    assert result.returncode != 0 and message in result.stderr, result.stderr


def test_every_values_key_is_documented():
    """A comment directly above every key of values.yaml (the chart's contract with its users)."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped and not stripped.startswith(("#", "-")) and ":" in stripped:
            assert lines[i - 1].strip().startswith("#"), f"values.yaml:{i + 1}: {stripped!r} has no comment"


@pytest.mark.parametrize("name", RENDERINGS)
def test_server_side_dry_run(kube, renderings, name):
    docs = renderings[name]
    namespace = next((d["metadata"]["name"] for d in docs if d["kind"] == "Namespace"), "loganalyzer")
    kube.ensure_namespace(namespace)
    result = kube.dry_run(docs, namespace)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("(server dry run)") == len(docs)


def test_dry_run_rejects_invalid_objects(kube, renderings):
    docs = yaml.safe_load_all(yaml.safe_dump_all(renderings["base"]))
    docs = [d for d in docs if d["kind"] == "PyTorchJob"]
    docs[0]["spec"]["pytorchReplicaSpecs"]["Master"]["replicas"] = "one"
    kube.ensure_namespace("loganalyzer")
    result = kube.dry_run(docs, "loganalyzer")
    assert result.returncode != 0 and "replicas" in result.stderr


RBAC_NAMESPACE = "loganalyzer-rbac"
SA = f"system:serviceaccount:{RBAC_NAMESPACE}:loganalyzer-pipeline"


@pytest.fixture(scope="module")
def installed(kube, renderings):
    """The base installed for real (not dry-run) in its own namespace, so its RBAC can be exercised."""
    docs = [d for d in yaml.safe_load_all(yaml.safe_dump_all(renderings["base"])) if d["kind"] != "Namespace"]
    for d in docs:
        d["metadata"]["namespace"] = RBAC_NAMESPACE
        for s in d.get("subjects", []):
            s["namespace"] = RBAC_NAMESPACE
    kube.ensure_namespace(RBAC_NAMESPACE)
    kube.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(ARGO_CRD_STUBS))
    kube.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                 *[f"crd/{c['metadata']['name']}" for c in ARGO_CRD_STUBS])
    kube.kubectl("apply", "--validate=false", "-n", RBAC_NAMESPACE, "-f", "-", input=yaml.safe_dump_all(docs))
    return kube


def _crd_stub(kind: str, plural: str) -> dict:
    """A schemaless CRD with Argo's names (argoproj.io/v1alpha1), so that `kubectl auth can-i` resolves it: the
    real Argo CRDs are not in ../shared/k8s and only their names matter to RBAC."""
    return {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": f"{plural}.argoproj.io"},
            "spec": {"group": "argoproj.io", "scope": "Namespaced",
                     "names": {"kind": kind, "plural": plural, "singular": kind.lower()},
                     "versions": [{"name": "v1alpha1", "served": True, "storage": True,
                                   "schema": {"openAPIV3Schema": {"type": "object",
                                                                  "x-kubernetes-preserve-unknown-fields": True}}}]}}


ARGO_CRD_STUBS = [_crd_stub("WorkflowTaskResult", "workflowtaskresults"), _crd_stub("Workflow", "workflows")]


@pytest.mark.parametrize("verb, resource, namespace, allowed", [
    *[(v, "pytorchjobs.kubeflow.org", RBAC_NAMESPACE, True) for v in ("create", "get", "list", "watch", "delete")],
    *[(v, "inferenceservices.serving.kserve.io", RBAC_NAMESPACE, True)
      for v in ("create", "get", "list", "watch", "update", "delete")],
    ("create", "rayjobs.ray.io", RBAC_NAMESPACE, True),
    ("get", "pods/log", RBAC_NAMESPACE, True),
    ("get", "configmaps/loganalyzer-recipes", RBAC_NAMESPACE, True),
    # a KFP v2 task running as this ServiceAccount: Argo's task results, the launcher's ConfigMap and the artifact
    # store's credentials (kubeflow/pipelines manifests/kustomize/base/pipeline/pipeline-runner-role.yaml grants
    # these and far more to pipeline-runner), by name
    ("create", "workflowtaskresults.argoproj.io", RBAC_NAMESPACE, True),
    ("patch", "workflowtaskresults.argoproj.io", RBAC_NAMESPACE, True),
    ("get", "configmaps/kfp-launcher", RBAC_NAMESPACE, True),
    ("get", "secrets/mlpipeline-minio-artifact", RBAC_NAMESPACE, True),
    ("delete", "workflowtaskresults.argoproj.io", RBAC_NAMESPACE, False),
    ("get", "workflows.argoproj.io", RBAC_NAMESPACE, False),
    # never: other Secrets, other ConfigMaps, pods/exec, other namespaces, cluster-wide objects, RBAC itself
    ("get", "secrets/loganalyzer-teacher", RBAC_NAMESPACE, False),
    ("get", "secrets", RBAC_NAMESPACE, False),
    ("list", "secrets", RBAC_NAMESPACE, False),
    ("get", "configmaps/kube-root-ca.crt", RBAC_NAMESPACE, False),
    ("list", "configmaps", RBAC_NAMESPACE, False),
    ("create", "pods/exec", RBAC_NAMESPACE, False),
    ("create", "pods", RBAC_NAMESPACE, False),
    ("patch", "pytorchjobs.kubeflow.org", RBAC_NAMESPACE, False),
    ("create", "pytorchjobs.kubeflow.org", "default", False),
    ("create", "inferenceservices.serving.kserve.io", "kube-system", False),
    ("list", "nodes", "", False),
    ("create", "rolebindings.rbac.authorization.k8s.io", RBAC_NAMESPACE, False),
    ("create", "clusterrolebindings.rbac.authorization.k8s.io", "", False),
])
def test_rbac_least_privilege(installed, verb, resource, namespace, allowed):
    args = ["auth", "can-i", verb, resource] + (["-n", namespace] if namespace else [])
    result = installed.kubectl(*args, as_user=SA, check=False)
    assert result.stdout.strip() == ("yes" if allowed else "no"), (args, result.stdout, result.stderr)
