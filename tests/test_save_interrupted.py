"""A ``save`` killed at any rename leaves the old output or the new one, and the next save clears what it left.

Issue 22: a save killed between its renames left new weights beside the old manifest (the
previous good output no longer loaded), and its temporary files piled up.
"""

import subprocess
import sys
import textwrap

import pytest
import torch

import netcompress as nc
from conftest import SmallNet

CHILD = textwrap.dedent(r"""
    import os, signal, sys
    import torch
    sys.path.insert(0, __TESTS__)
    import netcompress as nc
    from conftest import SmallNet

    torch.set_num_threads(1)
    out, version, kill_at, with_report = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "report"
    torch.manual_seed(version)
    model = SmallNet().eval()
    report = nc.compress(model, torch.randn(16, 3, 8, 8), method="magnitude", sparsity=0.3 + 0.2 * version,
                         progress=False)
    calls, replace = [0], os.replace

    def dying(source, target):  # SIGKILL: no handler, no cleanup, as a killed process or a power cut
        calls[0] += 1
        if calls[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        replace(source, target)

    os.replace = dying
    nc.save(model, out, report if with_report else None)
""")


def _compressed(version):
    """The model and report the child process with this ``version`` saves (same seed, same data)."""
    torch.manual_seed(version)
    model = SmallNet().eval()
    report = nc.compress(model, torch.randn(16, 3, 8, 8), method="magnitude", sparsity=0.3 + 0.2 * version,
                         progress=False)
    return model, report


def _save(out, version, kill_at, tests, report=True):
    script = CHILD.replace("__TESTS__", repr(str(tests)))
    return subprocess.run([sys.executable, "-c", script, str(out), str(version), str(kill_at),
                           "report" if report else "none"],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SIGKILL and flock are POSIX")
@pytest.mark.parametrize("kill_at", [2, 3, 4])  # before the switch, at it, after it
def test_a_save_killed_at_any_rename_leaves_a_whole_output_and_the_next_save_clears_its_files(tmp_path, kill_at,
                                                                                              request):
    tests = request.path.parent
    out = tmp_path / "out"
    x = torch.randn(4, 3, 8, 8)
    (old, old_report), (new, new_report) = _compressed(0), _compressed(1)
    with torch.no_grad():
        expected = {0: old(x), 1: new(x)}
    nc.save(old, out, old_report)
    killed = _save(out, 1, kill_at, tests)
    assert killed.returncode == -9, killed.stderr[-2000:]  # it really died mid-save

    loaded = nc.load(SmallNet().eval(), out)  # the old output or the new one: never a mix
    with torch.no_grad():
        got = loaded(x)
    which = next(v for v, y in expected.items() if torch.equal(got, y))
    report = nc.read_report(out)
    assert report.to_json() == (old_report, new_report)[which].to_json()
    assert which == (1 if kill_at > 3 else 0)  # killed before its call; the third rename (the manifest) switches

    nc.save(new, out, new_report)  # a later save finishes or removes what the killed one left
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.safetensors", "report.json"]
    with torch.no_grad():
        assert torch.equal(nc.load(SmallNet().eval(), out)(x), expected[1])



def test_a_single_file_writer_removes_only_its_own_stale_temporary_files(tmp_path):
    model = SmallNet().eval()
    nc.compress(model, torch.randn(16, 3, 8, 8), method="kmeans", bits=4, progress=False)
    stale = tmp_path / ".m.ncz.a1b2c3d4.tmp"  # what a killed save_compressed leaves
    stale.write_bytes(b"half a container")
    others = {tmp_path / ".other.ncz.a1b2c3d4.tmp": b"another name's", tmp_path / ".m.ncz.keep": b"not our pattern",
              tmp_path / "m.ncz.a1b2c3d4.tmp": b"not hidden"}
    for path, payload in others.items():
        path.write_bytes(payload)
    nc.save_compressed(model, tmp_path / "m.ncz")
    assert not stale.exists() and all(path.read_bytes() == payload for path, payload in others.items())
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["m.ncz", *(p.name for p in others)])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SIGKILL and flock are POSIX")
def test_a_report_the_new_save_leaves_out_is_never_read_as_its_own_and_goes_at_the_next_save(tmp_path, request):
    out = tmp_path / "out"
    old, old_report = _compressed(0)
    nc.save(old, out, old_report)
    killed = _save(out, 1, 3, request.path.parent, report=False)  # renames: weights, manifest (the switch), ...
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert (out / "report.json").read_text() == old_report.to_json()  # still there, but not the saved model's
    with pytest.raises(ValueError, match="holds no report.json of the model saved there"):
        nc.read_report(out)
    new, _ = _compressed(1)
    nc.save(new, out)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.safetensors"]


def test_without_a_lock_staged_weights_the_manifest_vouches_for_are_kept(tmp_path, request, monkeypatch):
    import fcntl
    import os
    import time

    out = tmp_path / "out"
    old, old_report = _compressed(0)
    nc.save(old, out, old_report)
    assert _save(out, 1, 4, request.path.parent).returncode == -9  # killed after the switch
    staged = out / ".model.safetensors.next"
    os.utime(staged, (time.time() - 7200,) * 2)  # old enough to look abandoned

    def refused(*args):  # NFS: flock on a read-only descriptor fails
        raise OSError(9, "Bad file descriptor")

    monkeypatch.setattr(fcntl, "flock", refused)
    monkeypatch.setattr("netcompress.storage.io.save_file", lambda *a, **k: (_ for _ in ()).throw(OSError(28, "full")))
    with pytest.raises(OSError, match="full"):
        nc.save(old, out, old_report)
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(nc.load(SmallNet().eval(), out)(x), _compressed(1)[0](x))
    monkeypatch.undo()
    nc.save(old, out, old_report)  # with a failing flock a save still works, unlocked
    with torch.no_grad():
        assert torch.equal(nc.load(SmallNet().eval(), out)(x), old(x))


def test_a_named_pipe_for_weights_is_refused_even_beside_staged_weights(tmp_path):
    import json
    import os

    out = tmp_path / "out"
    nc.save(_compressed(0)[0], out)
    record = json.loads((out / "manifest.json").read_text())
    for key in ("weights_sha256", "sha256"):
        record.pop(key)
    (out / "manifest.json").write_text(json.dumps(record))
    (out / "model.safetensors").unlink()
    os.mkfifo(out / "model.safetensors")
    (out / ".model.safetensors.next").write_bytes(b"anything")
    with pytest.raises(ValueError, match="weights file .*model.safetensors is a named pipe"):
        nc.load(SmallNet().eval(), out)
