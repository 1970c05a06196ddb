"""A griffe extension for docs/api.md: public names as Python sees them, and reST roles as Markdown.

``netcompress/__init__.py`` does ``from netcompress.compress import compress``: at run time
``netcompress.compress`` is the function, but griffe, reading the source, sets the submodule
``netcompress/compress.py`` over the imported name (it warns about such "member-submodule name
shadowing"), so ``::: netcompress.compress`` would document the module. Once the package is loaded,
this extension resolves every alias (so none later goes through the shadowed name) and puts the
imported object back under the public name, as Python does; the submodule is then no longer a member
of the package under that name (its objects keep their own paths).

The docstrings use reST roles (``:func:`collect```, ``:class:`Report```), which Markdown would show
as text; they become code spans (````collect````).

Configured in mkdocs.yml (``handlers.python.options.extensions``).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?[a-z]+:`~?([^`]+)`")


def _objects(obj: griffe.Object):
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _objects(member)


class PublicNames(griffe.Extension):
    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        for obj in _objects(pkg):
            if obj.docstring is not None:
                obj.docstring.value = ROLE.sub(r"`\1`", obj.docstring.value)
        shadowed = {name: target for name, target in pkg.imports.items()
                    if name in pkg.members and pkg.members[name].is_module and not pkg.members[name].is_alias
                    and target.startswith(pkg.members[name].path + ".")}
        if not shadowed:
            return
        loader.resolve_aliases(implicit=True, external=False)
        for name, target in shadowed.items():
            obj = loader.modules_collection.get_member(target)
            pkg.set_member(name, griffe.Alias(name, obj, parent=pkg))
