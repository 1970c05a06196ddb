"""Recipes are hostile input: aliases, size, nesting and every setting's type are checked first (issue 8, item 16)."""

import time

import pytest
import torch

import netcompress as nc
from conftest import SmallNet
from netcompress.pipeline import check_steps

BILLION_LAUGHS = "\n".join(
    [
        "# each line repeats the one before nine times",
        'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]',
        *(f"{n}: &{n} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]" for p, n in zip("abcdefgh", "bcdefghi", strict=True)),
        "steps: [{method: ternary, layers: *i}]",
    ]
)


def test_the_billion_laughs_recipe_is_refused_fast(tmp_path):
    assert 490 <= len(BILLION_LAUGHS) <= 520
    (tmp_path / "r.yaml").write_text(BILLION_LAUGHS)
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"not valid YAML \(it uses the alias \*a on line 3"):
        nc.read_recipe(tmp_path / "r.yaml")
    assert time.perf_counter() - start < 1.0


def test_huge_and_deeply_nested_recipes_are_refused(tmp_path):
    (tmp_path / "big.yaml").write_text("steps:\n" + "  - {method: ternary}\n" * 60_000)
    with pytest.raises(ValueError, match="larger than 1,048,576 bytes"):
        nc.read_recipe(tmp_path / "big.yaml")
    (tmp_path / "deep.yaml").write_text("steps: " + "[" * 5_000 + "]" * 5_000)
    with pytest.raises(ValueError, match="nests deeper than 32 levels"):
        nc.read_recipe(tmp_path / "deep.yaml")
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ValueError, match="not UTF-8"):
        nc.read_recipe(tmp_path / "bin.yaml")


@pytest.mark.parametrize("step, message", [
    ({"method": "kmeans", "bits": "4"}, "step 2: bits must be an integer, got '4'"),
    ({"method": "kmeans", "bits": 4.5}, "step 2: bits must be an integer"),
    ({"method": "magnitude", "sparsity": True}, "step 2: sparsity must be a number, got True"),
    ({"method": "magnitude", "sparsity": float("nan")}, "sparsity must be a finite number"),
    ({"method": "magnitude", "sparsity": {"fc1": 0.5, "fc2": "x"}}, "sparsity of layer 'fc2' must be a number"),
    ({"method": "binary", "stochastic": "yes"}, "stochastic must be true or false"),
    ({"method": "dalr"}, "needs exactly one of rank, keep, energy or budget"),
    ({"method": "dalr", "keep": 0.5, "rank": 3}, "needs exactly one of"),
    ({"method": "dalr", "keep": 1.5}, r"keep must be a fraction in \(0, 1\]"),
    ({"method": "dalr", "rank": {"fc1": "big"}}, "rank of layer 'fc1' must be an integer"),
    ({"method": "dalr", "rank": 4, "lam": "small"}, "lam must be"),
    ({"method": "kmeans", "bits": 4, "rank": 3}, "method 'kmeans' does not take rank"),
    ({"method": "kmeans", "bits": 4, "layers": ["re:fc("]}, "pattern 're:fc\\(' is not a valid regular expression"),
    ({"method": "kmeans", "bits": 4, "exclude": 3}, "exclude must be a layer name"),
    ({"method": 3}, "method must be a name"),
    ({"finetune": {"epochs": 2, "lr": 0.1, "momentum": 0.9}}, "finetune does not take momentum"),
    ({"finetune": {"epochs": "2", "lr": 0.1}}, "finetune's epochs must be an integer"),
    ({"finetune": {"epochs": 0, "lr": 0.1}}, "finetune's epochs must be positive"),
    ({"finetune": {"epochs": 1, "lr": 0.1, "distill": {"temperature": "hot"}}}, "distill's temperature must be a number"),
])
def test_every_setting_is_checked_against_the_methods_schema(step, message):
    with pytest.raises(ValueError, match=message):
        check_steps([{"method": "ternary"}, step] if "finetune" not in step else [step])


def test_numbers_in_exponent_notation_are_numbers(tmp_path):
    (tmp_path / "r.yaml").write_text("steps:\n  - {method: magnitude, sparsity: 5e-1}\n  - finetune: {epochs: 1, lr: 1e-3}\n")
    steps = nc.read_recipe(tmp_path / "r.yaml")
    assert steps[0]["sparsity"] == 0.5 and steps[1]["finetune"]["lr"] == 0.001


def test_a_step_that_fails_while_running_leaves_the_model_as_it_was():
    model = SmallNet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    steps = [{"method": "magnitude", "sparsity": 0.5}, {"method": "kmeans", "bits": 3, "layers": ["fc9"]}]
    with pytest.raises(ValueError, match="fc9"):
        nc.run_pipeline(model, steps, progress=False)
    assert type(model.fc1) is torch.nn.Linear
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


def test_a_method_that_needs_data_is_refused_before_anything_runs():
    model = SmallNet()
    with pytest.raises(ValueError, match="method 'dalr' needs target data"):
        nc.run_pipeline(model, [{"method": "magnitude", "sparsity": 0.5}, {"method": "dalr", "keep": 0.5}])
    assert type(model.fc1) is torch.nn.Linear
