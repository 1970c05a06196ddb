"""Hostile ranker descriptions: forged and mutated ``ranker.json`` files are refused with ValueError under a memory cap.

Everything runs in one subprocess whose address space is capped with ``resource.setrlimit``
(``RLIMIT_AS``), so an allocation driven by a forged ``crop``, ``width`` or ``--crops`` ends the
run with ``MemoryError`` (or torch's allocation ``RuntimeError``) instead of exhausting the
machine; the test fails on anything but ``ValueError`` or a ranker that loads and scores finitely.
"""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import run_capped

resource = pytest.importorskip("resource")


SCRIPT = textwrap.dedent(r"""
    import copy, json, math, os, random, resource, sys
    from pathlib import Path
    import numpy as np
    import torch
    from safetensors.torch import save_file
    from netcompress.cli.rank import load_ranker
    from netcompress.rankings import Shallow, score_image

    folder = Path(__FOLDER__)
    folder.mkdir(exist_ok=True)
    torch.manual_seed(0)
    save_file(Shallow(48, width=4).state_dict(), folder / "ranker.safetensors")
    WEIGHTS = (folder / "ranker.safetensors").read_bytes()
    GOOD = {"format": "netcompress.ranker", "version": 1, "crop": 48, "width": 4, "steps": 3, "groups": 4,
            "seed": 0, "images": 3, "kinds": ["blur", "noise", "jpeg", "jpeg2000"], "first_loss": 0.9,
            "last_loss": 0.4}
    IMAGE = np.random.default_rng(0).integers(0, 256, (80, 90, 3), dtype=np.uint8)

    def write(description=None, text=None, weights=WEIGHTS):
        for name in ("ranker.json", "ranker.safetensors"):
            if (folder / name).exists() or (folder / name).is_symlink():
                os.unlink(folder / name)
        (folder / "ranker.json").write_text(text if text is not None else json.dumps(description))
        if weights is not None:
            (folder / "ranker.safetensors").write_bytes(weights)

    def attempt(label, crops=2, must_refuse=True):
        try:
            model, crop = load_ranker(folder, crops=crops)
            score = score_image(model, IMAGE, crop, crops=crops)
        except ValueError as error:
            if "\n" in str(error) or (str(folder) not in str(error) and "not a finite number" not in str(error)):
                print(f"{label}: not one sentence naming the file: {error}"); sys.exit(1)
            return
        except BaseException as error:
            import traceback; traceback.print_exc()
            print(f"{label}: {type(error).__name__}: {str(error)[:300]}"); sys.exit(1)
        if must_refuse:
            print(f"{label}: was accepted"); sys.exit(1)
        if not math.isfinite(score):
            print(f"{label}: loaded, but scores {score}"); sys.exit(1)

    def forged(label, crops=2, **fields):
        write({**GOOD, **fields})
        attempt(label, crops)

    write(GOOD)
    attempt("the good ranker", must_refuse=False)
    # The description's network, and its scoring batch, are bounded before anything is built.
    forged("crop 1024 width 1024 (16 GB of parameters)", crop=1024, width=1024)
    forged("crop 1024 width 32, 4096 crops (55 GB of activations)", crops=4096, crop=1024, width=32)
    forged("crop 1024 width 256 (a 1 GB weights file it does not have)", crop=1024, width=256)
    forged("width 1024 (a 36 MB weights file it does not have)", width=1024)
    # Every field, forged: wrong JSON type, bool for int, huge, negative, float, missing.
    for field in ("version", "crop", "width", "steps", "groups", "seed", "images"):
        for value in (True, False, -1, 0, 10 ** 30, 2.5, 48.0, "48", None, [], {}):
            if field == "seed" and value in (-1, 0) and not isinstance(value, bool):
                continue  # any 64-bit seed is a seed
            forged(f"{field}={value!r}", **{field: value})
        description = dict(GOOD)
        del description[field]
        write(description)
        attempt(f"no {field}")
    for value in ("blur", [], ["blur", "blur"], ["fog"], [1], None, {"blur": 1}):
        forged(f"kinds={value!r}", kinds=value)
    for value in (-1.0, "0.5", None, True, [0.1]):
        forged(f"first_loss={value!r}", first_loss=value)
    forged("format", format="netcompress.other")
    forged("an unknown field", extra=1)
    write(text=json.dumps(GOOD).replace("0.9", "NaN"))
    attempt("NaN loss")
    write(text=json.dumps(GOOD).replace("48", "9" * 5000))
    attempt("a 5000-digit crop")
    write(text="[" * 100000 + "]" * 100000)
    attempt("deep nesting")
    write(text="\ufeff" + json.dumps(GOOD)[:-7])
    attempt("truncated")
    write(text=json.dumps(GOOD).encode("utf-16").decode("latin-1"))
    attempt("utf-16")
    write(GOOD, weights=None)
    attempt("no weights")
    os.mkfifo(folder / "ranker.safetensors")
    attempt("weights a FIFO")
    write(GOOD)
    os.unlink(folder / "ranker.json")
    os.mkfifo(folder / "ranker.json")
    attempt("description a FIFO")
    write(GOOD, weights=WEIGHTS[:-8])
    attempt("truncated weights")
    write(GOOD, weights=WEIGHTS + b"\0" * (2 << 20))
    attempt("padded weights")
    nan = Shallow(48, width=4).state_dict()
    nan["fc.bias"].fill_(float("nan"))
    save_file(nan, folder / "nan.safetensors")
    write(GOOD, weights=(folder / "nan.safetensors").read_bytes())
    attempt("NaN weights")
    double = {k: v.double() for k, v in Shallow(48, width=2).state_dict().items()}
    save_file(double, folder / "double.safetensors")
    write({**GOOD, "width": 2}, weights=(folder / "double.safetensors").read_bytes())
    attempt("float64 weights")
    # Seeded random mutations of the description and byte flips of the weights.
    rng = random.Random(__SEED__)
    values = [-1, 0, 1, 47, 48, 63, 64, 1024, 1025, 2 ** 31, 2 ** 63, 10 ** 30, 1.5, 48.0, 1e308, "48", "x", None,
              [], {}, True, False, ["blur"]]
    keys = list(GOOD) + ["extra"]
    for trial in range(__TRIALS__):
        description = copy.deepcopy(GOOD)
        for _ in range(rng.randint(1, 3)):
            key = rng.choice(keys)
            if rng.random() < 0.15:
                description.pop(key, None)
            else:
                description[key] = rng.choice(values)
        weights = WEIGHTS
        if rng.random() < 0.3:
            flipped = bytearray(WEIGHTS)
            flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
            weights = bytes(flipped)
        text = json.dumps(description)
        if rng.random() < 0.1:
            text = text[:rng.randrange(len(text))]
        write(text=text, weights=weights)
        attempt(f"mutation {trial}", crops=rng.choice([1, 2, 16, 4096]), must_refuse=False)
    print("ok", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
""")


def _run(tmp_path: Path, seed: int, trials: int) -> subprocess.CompletedProcess:
    return run_capped(SCRIPT, folder=str(tmp_path / "ranker"), seed=seed, trials=trials)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS caps memory reliably only on Linux")
def test_forged_and_mutated_ranker_descriptions_are_refused_under_a_memory_cap(tmp_path):
    result = _run(tmp_path, seed=20261207, trials=400)
    assert result.returncode == 0 and result.stdout.startswith("ok"), (result.stdout + result.stderr)[-3000:]
