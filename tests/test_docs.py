"""The documentation: every page in mkdocs.yml exists, every relative link resolves, docs/results/ is current."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
SNIPPET = re.compile(r"^\s*--8<--\s+\"([^\"]+)\"", re.MULTILINE)


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
            elif section and f"[start:{section}]" not in included.read_text(encoding="utf-8"):
                broken.append(f"{path.relative_to(ROOT)}: --8<-- {snippet} (no such section)")
    assert not broken, "links that do not resolve:\n" + "\n".join(broken)


def test_rendered_results_are_up_to_date():
    done = subprocess.run([sys.executable, str(DOCS / "render.py"), "--check"], capture_output=True, text=True,
                          cwd=ROOT, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "up to date" in done.stdout
