import subprocess
import sys


def test_import_stays_lean():
    code = (
        "import sys, netcompress\n"
        "heavy = [m for m in ('matplotlib', 'mlxtend', 'sklearn', 'PIL', 'yaml', 'onnx', 'onnxruntime', 'transformers') if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_public_surface_is_explicit():
    import netcompress

    assert sorted(netcompress.__all__) == sorted(set(netcompress.__all__))
    for name in netcompress.__all__:
        assert getattr(netcompress, name).__doc__, f"{name} has no docstring"
