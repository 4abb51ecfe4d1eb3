"""Whether .venv already holds what scripts/setup.sh would install, so that
setup can skip pip (and a rerun works without the package index).

Run by .venv/bin/python from the top of the tree:

    .venv/bin/python -I scripts/venv_current.py [--extra NAME ...]

(-I: a $PYTHONPATH must not show it another copy of pyxdp.)

Exit 0: the installed pyxdp is this tree's (same version and entry points,
every package file the same bytes, none more) and every requirement of the
tree (with the extras named), and theirs in turn, is installed in a version
it accepts. Exit 1: not, with the reason on stdout. Exit 2: bad usage."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import sys
from importlib import metadata
from typing import Any

ROOT = os.getcwd()


class NotCurrent(Exception):
    pass


def _read_pyproject() -> dict[str, Any]:
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ImportError:
            raise NotCurrent("no TOML parser to read pyproject.toml") from None
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as fh:
        return tomllib.load(fh)


def _requirement_class() -> type:
    try:
        from packaging.requirements import Requirement
    except ImportError:
        try:  # pip carries its own copy
            from pip._vendor.packaging.requirements import Requirement  # type: ignore[assignment]
        except ImportError:
            raise NotCurrent("neither packaging nor pip is installed") from None
    return Requirement


def _sha256(path: str) -> str:
    with open(path, "rb") as fh:
        digest = hashlib.sha256(fh.read()).digest()
    return "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _package_files(project: dict[str, Any]) -> set[str]:
    """The tree's files that go into the package: each package's modules and its package data."""
    import fnmatch

    tool = project.get("tool", {}).get("setuptools", {})
    data = tool.get("package-data", {})
    out = set()
    for pkg in tool.get("packages", []):
        pdir = os.path.join(ROOT, *pkg.split("."))
        patterns = ["*.py", *data.get(pkg, []), *data.get("*", [])]
        for name in os.listdir(pdir):
            if os.path.isfile(os.path.join(pdir, name)) and any(fnmatch.fnmatch(name, p) for p in patterns):
                out.add("/".join([*pkg.split("."), name]))
    return out


def tree_version(project: dict[str, Any]) -> str:
    """The tree's version: pyproject's, or (``dynamic``) the ``attr`` it names, read without importing it."""
    meta = project["project"]
    if "version" in meta:
        return str(meta["version"])
    import ast

    attr = project["tool"]["setuptools"]["dynamic"]["version"]["attr"]
    module, _, var = attr.rpartition(".")
    path = os.path.join(ROOT, *module.split("."))
    with open(os.path.join(path, "__init__.py") if os.path.isdir(path) else path + ".py") as f:
        tree = ast.parse(f.read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == var for t in node.targets):
            return str(ast.literal_eval(node.value))
    raise NotCurrent(f"no {attr} in the tree")


def check_installed(project: dict[str, Any]) -> None:
    meta = project["project"]
    name = meta["name"]
    want = tree_version(project)
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        raise NotCurrent(f"{name} is not installed") from None
    if dist.version != want:
        raise NotCurrent(f"{name} {dist.version} is installed, the tree has {want}")
    scripts = {ep.name: ep.value for ep in dist.entry_points if ep.group == "console_scripts"}
    if scripts != meta.get("scripts", {}):
        raise NotCurrent(f"{name}'s commands changed")
    tops = tuple(p.split(".")[0] + "/" for p in project.get("tool", {}).get("setuptools", {}).get("packages", []))
    wanted = _package_files(project)
    installed = set()
    for f in dist.files or []:
        path = str(f)
        if path.endswith(".pyc") or not path.startswith(tops):
            continue
        installed.add(path)
        if path not in wanted:
            raise NotCurrent(f"the installed {name} has {path}, the tree does not")
        if f.hash is None or _sha256(os.path.join(ROOT, path)) != f"{f.hash.mode}={f.hash.value}":
            raise NotCurrent(f"{path} changed")
    missing = sorted(wanted - installed)
    if missing:
        raise NotCurrent(f"{missing[0]} is not installed")
    for f in dist.files or []:
        if str(f).startswith("../") and not os.path.exists(f.locate()):
            raise NotCurrent(f"{f} is missing")


def check_requirements(texts: list[str]) -> None:
    """Each requirement (and, in turn, each of its own) installed in a version it accepts."""
    requirement = _requirement_class()
    todo = [(requirement(t), "pyproject.toml") for t in texts]
    seen = set()
    while todo:
        req, why = todo.pop()
        key = (re.sub(r"[-_.]+", "-", req.name).lower(), frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            raise NotCurrent(f"{req.name} is not installed (wanted by {why})") from None
        if not req.specifier.contains(dist.version, prereleases=True):
            raise NotCurrent(f"{req.name} {dist.version} is installed; {why} wants {req}")
        for text in dist.requires or []:
            sub = requirement(text)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in ("", *req.extras)):
                todo.append((sub, req.name))


def main(argv: list[str]) -> int:
    extras = []
    while argv:
        if argv[0] != "--extra" or len(argv) < 2:
            print("usage: .venv/bin/python -I scripts/venv_current.py [--extra NAME ...]", file=sys.stderr)
            return 2
        extras.append(argv[1])
        argv = argv[2:]
    try:
        project = _read_pyproject()
        check_installed(project)
        meta = project["project"]
        texts = list(meta.get("dependencies", []))
        for extra in extras:
            texts += meta.get("optional-dependencies", {}).get(extra, [])
        check_requirements([t for t in texts if _applies(t)])
    except NotCurrent as exc:
        print(exc)
        return 1
    return 0


def _applies(text: str) -> bool:
    """A requirement of the tree whose marker holds here (``tomli; python_version < "3.11"``)."""
    req = _requirement_class()(text)
    return req.marker is None or bool(req.marker.evaluate({"extra": ""}))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
