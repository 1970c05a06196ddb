"""The documentation: every page in mkdocs.yml exists, every relative link resolves, docs/results/ and the
methods table are current, the API page names every public name, and the pages' Python examples run."""

import dataclasses
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
SNIPPET = re.compile(r"^\s*--8<--\s+\"([^\"]+)\"", re.MULTILINE)
SECTION_NAME = re.compile(r"[a-z][-_0-9a-z]*")  # what pymdownx.snippets takes after "file.md:"
FENCE = re.compile(r"^```([\w+-]*)[^\n]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
SKIP = re.compile(r"^<!--\s*skip-test\b:?\s*(.*?)\s*-->$")
# Packages of the extras that some examples import; without them an example is skipped, not failed.
OPTIONAL = {"sklearn", "skimage", "onnx", "onnxruntime", "transformers"}


def nav_pages() -> list[str]:
    """The .md paths named in mkdocs.yml's nav (read without a YAML dependency on its layout)."""
    text = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    nav = text[text.index("\nnav:"):]
    return re.findall(r":\s*([\w./-]+\.md)\s*$", nav, re.MULTILINE)


def outside_code(text: str) -> str:
    """The text with fenced code blocks and inline code removed."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)
    return re.sub(r"`[^`\n]*`", "", text)


def test_every_nav_page_exists():
    pages = nav_pages()
    assert len(pages) >= 16
    missing = [page for page in pages if not (DOCS / page).is_file()]
    assert not missing, f"pages in mkdocs.yml but not in docs/: {missing}"


def test_every_relative_link_resolves():
    broken = []
    for path in [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]:
        text = path.read_text(encoding="utf-8")
        for target in LINK.findall(outside_code(text)):
            if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
                continue  # an absolute URL, or an anchor in the same page
            if not (path.parent / target.split("#")[0]).exists():
                broken.append(f"{path.relative_to(ROOT)}: {target}")
        for snippet in SNIPPET.findall(text):
            file, _, section = snippet.partition(":")
            included = DOCS / file
            if not included.is_file():
                broken.append(f"{path.relative_to(ROOT)}: --8<-- {snippet}")
            elif section and not SECTION_NAME.fullmatch(section):
                broken.append(f"{path.relative_to(ROOT)}: --8<-- {snippet} (pymdownx.snippets reads no such section name)")
            elif section and f"[start:{section}]" not in included.read_text(encoding="utf-8"):
                broken.append(f"{path.relative_to(ROOT)}: --8<-- {snippet} (no such section)")
    assert not broken, "links that do not resolve:\n" + "\n".join(broken)


def test_rendered_results_are_up_to_date():
    done = subprocess.run([sys.executable, str(DOCS / "render.py"), "--check"], capture_output=True, text=True,
                          cwd=ROOT, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "up to date" in done.stdout


# --------------------------------------------------------------------------- the methods table


def _render():
    spec = importlib.util.spec_from_file_location("docs_render", DOCS / "render.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_check_fails_when_the_methods_table_is_out_of_date(tmp_path, monkeypatch, capsys):
    render = _render()
    page = (DOCS / "getting-started.md").read_text(encoding="utf-8")
    assert "| `dalr` | lowrank |" in page, "the methods table of getting-started.md lost its dalr row"
    stale = tmp_path / "getting-started.md"
    stale.write_text(page.replace("| `dalr` | lowrank |", "| `dalr` | layer |"), encoding="utf-8")
    monkeypatch.setattr(render, "METHODS_PAGE", stale)
    assert render.main(["--check"]) == 1
    assert "out of date: the methods table" in capsys.readouterr().out
    assert render.main([]) == 0  # rewritten
    assert stale.read_text(encoding="utf-8") == page
    stale.write_text("# no markers\n", encoding="utf-8")
    with pytest.raises(SystemExit, match="lacks the markers"):
        render.main(["--check"])


def test_methods_table_follows_the_registry():
    import netcompress as nc

    render = _render()

    from dataclasses import dataclass

    @dataclass(frozen=True, kw_only=True)
    class DocsTest(nc.Settings):
        fraction: float
        mode: str = "rows"

    @nc.register("docs-test-method", DocsTest, family="layer", example={"fraction": 0.5})
    def docs_test_method(layer, moments=None, *, fraction: float, mode: str = "rows"):
        """Zero ``fraction`` of the rows (see :func:`compress`).

        Not in the table: only the first paragraph is."""
        return layer

    try:
        table = "\n".join(render.methods_table(*render._registry()))
    finally:
        nc.unregister("docs-test-method")
    row = next(line for line in table.splitlines() if line.startswith("| `docs-test-method` |"))
    assert "`fraction`: float (required)<br>`mode`: str = `'rows'`" in row
    assert row.endswith("| no | Zero `fraction` of the rows (see `compress`). |")
    assert "| `uniform` | layer |" in table and "int \\| None" in table  # pipes outside code escaped


def test_methods_table_reads_a_settings_dataclass():
    render = _render()

    @dataclasses.dataclass
    class Settings:
        bits: int
        symmetric: bool = True
        layers: list = dataclasses.field(default_factory=list)

    class WithSettings:
        settings_class = Settings

    assert render.method_settings(WithSettings()) == [("bits", "int", None), ("symmetric", "bool", "True"),
                                                      ("layers", "list", "[]")]


# --------------------------------------------------------------------------- the API page


def test_api_page_names_every_public_name_through_the_package():
    import netcompress

    names = re.findall(r"^:::\s*(\S+)", (DOCS / "api.md").read_text(encoding="utf-8"), re.MULTILINE)
    inner = [name for name in names if not re.fullmatch(r"netcompress\.\w+", name)]
    assert not inner, f"docs/api.md names objects through their modules (they move): {inner}"
    shown = {name.split(".", 1)[1] for name in names}
    assert set(netcompress.__all__) - shown == set(), "netcompress.__all__ names missing from docs/api.md"
    assert shown - set(netcompress.__all__) == set(), "docs/api.md names objects outside netcompress.__all__"


# --------------------------------------------------------------------------- the examples


def python_blocks() -> list:
    """Every ```python block of docs/*.md, as a pytest param (marked skip after ``<!-- skip-test -->``)."""
    blocks = []
    for path in sorted(DOCS.rglob("*.md")):
        text = path.read_text(encoding="utf-8")
        for match in FENCE.finditer(text):
            if match.group(1) != "python":
                continue  # ```bash, ```console and bare fences show command lines and output: not run
            line = text.count("\n", 0, match.start()) + 1
            before = text[:match.start()].rstrip("\n").rsplit("\n", 1)[-1].strip()
            skip = SKIP.match(before)
            marks = [pytest.mark.skip(reason=skip.group(1) or "marked skip-test")] if skip else []
            name = f"{path.relative_to(DOCS)}:{line}"
            blocks.append(pytest.param(name, match.group(2), marks=marks, id=name))
    return blocks


def test_the_pages_have_examples():
    assert len(python_blocks()) >= 10


@pytest.mark.parametrize(("where", "code"), python_blocks())
def test_docs_example_runs(where, code, tmp_path, monkeypatch):
    """One example, in a fresh namespace, in an empty temporary directory; methods it registers are removed."""
    import torch

    import netcompress

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TQDM_DISABLE", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small examples: one thread is faster than two fighting other processes
    registered = set(netcompress.METHODS)
    try:
        exec(compile(code, f"docs/{where}", "exec"), {"__name__": "__docs_example__"})
    except ModuleNotFoundError as error:
        if (error.name or "").split(".")[0] not in OPTIONAL:
            raise
        pytest.skip(f"needs {error.name} (an optional extra)")
    finally:
        torch.set_num_threads(threads)
        for name in set(netcompress.METHODS) - registered:
            netcompress.unregister(name)
