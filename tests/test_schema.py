"""The experiment file's JSON Schema (``runner schema``): committed and current, a valid
draft-07 schema, met by every example, and as strict as the spec where a schema can be."""

from __future__ import annotations

import importlib.util

import orjson
import pytest
from jsonschema import Draft7Validator
from jsonschema.exceptions import best_match

from runner import SpecError
from runner.engine.plugin_manager import load_plugins
from runner.experiment_file.schema import experiment_schema
from runner.experiment_file.spec import TOP_LEVEL, parse
from tests.conftest import QUICK, ROOT, deep_update
from tests.test_cli import runner
from tests.test_spec import BAD_SPECS

COMMITTED = ROOT / "experiments" / "experiment.schema.json"
EXAMPLES = sorted(p for p in (ROOT / "experiments").glob("*.json") if p != COMMITTED)

HALVING = '''
from dataclasses import dataclass, field
from runner import Strategy, bounds, hookimpl


@dataclass(frozen=True)
class Options:
    rungs: int = field(default=3, metadata=bounds(ge=1, doc="how many rungs"))


class Halving(Strategy):
    """Successive halving, of a sort."""

    name = "halving"
    Options = Options

    def ask(self, history):
        return None


@hookimpl
def runner_register(registry):
    registry.add_strategy(Halving)
    registry.add_unavailable("backend", "jax", "needs JAX: pip install jax")
'''


def as_json(value):
    return orjson.loads(orjson.dumps(value))


@pytest.fixture(scope="module")
def registry():
    return load_plugins().registry


@pytest.fixture(scope="module")
def schema(registry):
    return experiment_schema(registry)


@pytest.fixture(scope="module")
def validator(schema):
    return Draft7Validator(schema)


def test_the_committed_schema_is_what_runner_schema_generates(schema):
    missing = [name for name in ("torch", "ray", "optuna") if importlib.util.find_spec(name) is None]
    if missing:
        pytest.skip(
            f"{COMMITTED.name} is generated with torch, ray and optuna installed; without {' and '.join(missing)} "
            "their plugins are unavailable, which changes the schema"
        )
    assert orjson.loads(COMMITTED.read_bytes()) == as_json(schema), (
        f"{COMMITTED.relative_to(ROOT)} is out of date: regenerate it with "
        f"`runner schema --out {COMMITTED.relative_to(ROOT)}` (with torch, ray and optuna installed)"
    )


def test_it_is_a_draft_07_schema_of_every_section(schema):
    Draft7Validator.check_schema(schema)
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert list(schema["properties"]) == list(TOP_LEVEL)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_names_it_and_meets_it(path, validator):
    doc = orjson.loads(path.read_bytes())
    assert next(iter(doc)) == "$schema" and doc["$schema"] == "./experiment.schema.json"
    assert [e.message for e in validator.iter_errors(doc)] == []


def test_the_base_of_the_broken_specs_meets_it(validator):
    assert [e.message for e in validator.iter_errors(QUICK)] == []


@pytest.mark.parametrize("changes, expected", BAD_SPECS)
def test_it_rejects_every_broken_spec_of_the_validation_tests(validator, changes, expected):
    error = best_match(validator.iter_errors(deep_update(QUICK, changes)))
    assert error is not None, "the schema accepts it"
    where, path = ".".join(map(str, error.absolute_path)), expected.split(":")[0]
    assert path.startswith(where) or where.startswith(path), (
        f"the spec says {path}, the schema {where}: {error.message}"
    )
    assert where or repr(path) in error.message, error.message


@pytest.mark.parametrize(
    "changes, valid",
    [
        (
            {
                "backend": "numpy",
                "data": "digits",
                "executor": "inline",
                "search": {"strategy": "grid", "space": {"backend.dtype": {"choices": ["float64"]}}},
            },
            True,
        ),
        pytest.param(
            {
                "backend": {"name": "torch", "device": "cpu"},
                "model": {"activation": "tanh"},
                "search": {"space": {"backend.device": {"choices": ["cpu"]}}},
            },
            True,
            marks=pytest.mark.torch,
        ),
        pytest.param(
            {"backend": "torch", "search": {"space": {"backend.device": {"choices": ["cpu"]}}}},
            True,
            marks=pytest.mark.torch,
        ),
        pytest.param({"backend": "torch", "model": {"activation": "swish"}}, False, marks=pytest.mark.torch),
        ({"backend": {"name": "numpy", "device": "cpu"}}, False),  # a Torch option
        ({"search": {"space": {"backend.device": {"choices": ["cpu"]}}}}, False),  # numpy by default
        ({"search": {"space": {"train.batch_size": {"low": 16, "high": 128, "type": "int", "scale": "log"}}}}, True),
        ({"search": {"space": {"train.batch_size": {"low": 16, "high": 128}}}}, False),  # floats for an integer
        ({"search": {"space": {"train.batch_size": {"low": 0, "high": 128, "type": "int"}}}}, False),
        ({"search": {"space": {"train.momentum": {"low": 0.5, "high": 1.5}}}}, False),  # momentum < 1
        ({"search": {"space": {"train.lr": {"low": 1, "high": 2, "type": "int", "scale": "log1m"}}}}, False),
        ({"search": {"space": {"train.lr": {"choices": []}}}}, False),
        ({"search": {"space": {"train.lr": {"low": 0.1}}}}, False),
        ({"search": {"space": {"train.lr": {"low": 0.1, "high": 1, "step": 2}}}}, False),
        ({"search": {"space": {"train": {"choices": [{"epochs": 1}]}}}}, False),
        ({"search": {"metric": "train_loss", "mode": "min"}}, True),
        ({"executor": {"name": "process", "workers": 2, "gpus": [0, 1]}}, True),
        ({"executor": {"name": "process", "gpus": None}}, True),
        ({"executor": {"name": "process", "gpus": [0.5]}}, False),
        ({"data": "csv"}, False),  # the name alone, for a dataset whose path is required
        ({"name": "  "}, False),
        ({"seed": True}, False),
        ({"model": {"hidden": [32, "wide"]}}, False),
        ({"checkpoint": {"keep": 0}}, False),
        ({"divergence": {"lr_cut": 1.0, "smoothing": 0.0}}, True),
    ],
)
def test_it_agrees_with_the_spec(registry, validator, changes, valid):
    doc = deep_update(QUICK, changes)
    try:
        parse(doc, registry)
        spec_valid = True
    except SpecError:
        spec_valid = False
    assert (spec_valid, validator.is_valid(doc)) == (valid, valid)


def test_a_one_off_plugin_is_in_it_and_an_unavailable_one_takes_anything(tmp_path):
    plugin = tmp_path / "halving.py"
    plugin.write_text(HALVING)
    schema = experiment_schema(load_plugins([str(plugin)]).registry)
    validator = Draft7Validator(schema)
    assert validator.is_valid(deep_update(QUICK, {"search": {"strategy": {"name": "halving", "rungs": 2}}}))
    assert not validator.is_valid(deep_update(QUICK, {"search": {"strategy": {"name": "halving", "rungs": 0}}}))
    assert not validator.is_valid(deep_update(QUICK, {"search": {"strategy": {"name": "halving", "trials": 2}}}))
    assert validator.is_valid(deep_update(QUICK, {"backend": {"name": "jax", "whatever": 1}, "model": {"depth": 9}}))
    assert "needs JAX: pip install jax" in orjson.dumps(schema).decode()


def test_runner_schema_prints_it_or_writes_it(tmp_path, schema):
    printed = runner("schema")
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.endswith("}\n") and orjson.loads(printed.stdout) == as_json(schema)

    plugin = tmp_path / "halving.py"
    plugin.write_text(HALVING)
    out = tmp_path / "my.schema.json"
    written = runner("schema", "--plugin", plugin, "--out", out)
    assert written.returncode == 0, written.stderr
    assert orjson.loads(out.read_bytes()) == as_json(experiment_schema(load_plugins([str(plugin)]).registry))
    assert sorted(tmp_path.iterdir()) == sorted([out, plugin]), "no temporary file is left"

    failed = runner("schema", "--out", tmp_path / "no" / "such" / "folder.json")
    assert failed.returncode == 2 and "cannot write it" in failed.stderr
