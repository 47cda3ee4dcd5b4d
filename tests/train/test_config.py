"""Config resolution: layers, component defaults, and one-line errors naming the key."""

import pytest

from trainlab.config import ConfigError
from trainlab.train.config import for_resume, load_yaml, parse_overrides, resolve


def test_defaults_are_the_grokking_recipe():
    cfg = resolve()
    assert (cfg.workload.name, cfg.model.name, cfg.optimizer.name, cfg.schedule.name) == (
        "modular", "mlp", "adamw", "constant")
    assert cfg.optimizer.options.weight_decay == 1.0 and cfg.optimizer.options.betas == (0.9, 0.98)
    assert cfg.train.steps == 3000 and cfg.train.batch_size == 0 and cfg.train.eval_every == 50
    assert cfg.model.options.width == 128  # the workload's default model options apply


def test_overrides_are_typed():
    cfg = resolve([parse_overrides(["optimizer.lr=1e-4", "optimizer.betas=0.8,0.9", "steps=10",
                                    "workload.p=13", "compile=false", "grad_clip=none"])])
    assert cfg.optimizer.options.lr == 1e-4 and cfg.optimizer.options.betas == (0.8, 0.9)
    assert cfg.train.steps == 10 and cfg.workload.options.p == 13
    assert cfg.train.compile is False and cfg.train.grad_clip is None


def test_naming_another_component_starts_from_its_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optimizer:\n  name: adamw\n  lr: 0.5\n  amsgrad: true\n")
    cfg = resolve([load_yaml(path), parse_overrides(["optimizer=sgd"])])
    assert cfg.optimizer.name == "sgd" and cfg.optimizer.options.lr == 1e-3  # adamw's lr did not leak
    same = resolve([load_yaml(path), parse_overrides(["optimizer=adamw"])])
    assert same.optimizer.options.lr == 0.5  # same name: options kept


def test_yaml_accepts_nested_and_dotted_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("workload: sparse_parity\nworkload.n: 12\nmodel:\n  width: 32\nsteps: 7\noptimizer.lr: 1e-3\n")
    cfg = resolve([load_yaml(path)])
    assert cfg.workload.name == "sparse_parity" and cfg.workload.options.n == 12
    assert cfg.model.options.width == 32 and cfg.train.steps == 7
    assert cfg.optimizer.options.lr == 1e-3  # YAML 1.1 reads "1e-3" as a string; the type coerces it


def test_model_named_explicitly_gets_its_defaults():
    cfg = resolve([parse_overrides(["model=transformer"])])
    assert cfg.model.name == "transformer" and cfg.model.options.n_layer == 2


@pytest.mark.parametrize("item, key, words", [
    ("optimizer.lrr=1", "optimizer.lrr", "unknown key; allowed: lr, betas"),
    ("stepz=1", "stepz", "unknown key; allowed:"),
    ("steps=ten", "steps", "expected int"),
    ("steps=0", "steps", "must be >= 1"),
    ("optimizer.lr=-1", "optimizer.lr", "must be >= 0"),
    ("optimizer=adamx", "optimizer", "unknown optimizer 'adamx'"),
    ("device=tpu", "device", "expected one of auto, cpu, cuda, mps"),
    ("workload.op=pow", "workload.op", "expected one of add"),
    ("optimizer.betas=0.9", "optimizer.betas", "expected 2 comma-separated floats"),
    ("steps", "steps", "expected key=value"),
    ("model.n_head=3", "model.n_head", ""),
])
def test_errors_name_the_key(item, key, words):
    overrides = [item, "model=transformer"] if item.startswith("model.") else [item]
    with pytest.raises(ConfigError) as err:
        resolve([parse_overrides(overrides)])
    assert err.value.key == key and words in str(err.value)
    assert "\n" not in str(err.value)


def test_schedule_that_does_not_fit_the_budget_is_refused():
    with pytest.raises(ConfigError, match="schedule.warmup"):
        resolve([parse_overrides(["schedule=cosine", "schedule.warmup=50", "steps=50"])])


def test_saved_config_round_trips(tmp_path):
    cfg = resolve([parse_overrides(["optimizer.betas=0.8,0.9", "workload.p=13", "schedule=cosine"])])
    cfg.save(tmp_path / "config.yaml")
    assert resolve([load_yaml(tmp_path / "config.yaml")]) == cfg


def test_resume_refuses_changes_that_break_continuation(tmp_path):
    resolve().save(tmp_path / "config.yaml")
    assert for_resume(tmp_path / "config.yaml", ["steps=4000"]).train.steps == 4000
    with pytest.raises(ConfigError, match="cannot change when resuming"):
        for_resume(tmp_path / "config.yaml", ["optimizer.lr=1"])


def test_bad_yaml_is_one_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("steps: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(path)
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_yaml(path)
