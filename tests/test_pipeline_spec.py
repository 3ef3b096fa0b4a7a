import yaml

from loganalyzer.demo import load_pipeline


def test_pipeline_compiles_with_the_dag_of_the_design(tmp_path):
    from kfp import compiler

    out = tmp_path / "p.yaml"
    compiler.Compiler().compile(load_pipeline(), str(out))
    spec = yaml.safe_load(out.read_text())
    tasks = spec["root"]["dag"]["tasks"]
    deps = {name: set(t.get("dependentTasks", [])) for name, t in tasks.items()}
    assert set(deps) == {"start", "chunk", "base-model", "synthesize", "build-datasets", "train", "train-2",
                         "train-3", "evaluate", "finish"}
    assert "chunk" in deps["synthesize"] and "base-model" in deps["synthesize"]
    assert "synthesize" in deps["build-datasets"]
    assert "build-datasets" in deps["train"]  # CPT
    assert "train" in deps["train-2"]  # SFT on the CPT model
    assert "train" not in deps["train-3"] and "base-model" in deps["train-3"]  # SFT on the base model
    assert {"train-2", "train-3", "base-model"} <= deps["evaluate"]
    assert spec["root"]["inputDefinitions"]["parameters"]["base_model_name"]["defaultValue"] == \
        "meta-llama/Llama-3.1-8B-Instruct"
    # The evaluate task exposes KFP Metrics for the UI's run comparison.
    outputs = spec["components"]["comp-evaluate"]["outputDefinitions"]["artifacts"]
    assert outputs["metrics"]["artifactType"]["schemaTitle"] == "system.Metrics"
