"""Which wheels a GPU machine needs carried to it, and whether what it ends up with fits.

The GPU machines (no internet) have Python 3.12 with PyTorch and many packages already
(benchmarks/gpu_image_packages.txt). The service and its tests need more: the closure of
pyproject.toml's dependencies and its ``test`` extra, through each package's declared
requirements, stopping at packages the image already has, unless the image's version is one a
requirement rules out (the list records such versions). The versions are constraints.txt's.
Two test requirements stay behind (``LEFT_BEHIND``): only tests the check does not run use
them, and their wheels alone (74 MiB) would not fit the 64 MiB the working tree may carry.

    python -m benchmarks.gpu_wheels list    # NAME==VERSION, one a line (gpu_wheels.sh)
    python -m benchmarks.gpu_wheels check   # on the GPU machine: every requirement met?

``list`` reads each package's requirements from this environment's installed metadata, so
run it where the project is installed with its test extra (the locked CI environment).
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from collections.abc import Iterable, Iterator
from importlib import metadata
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
IMAGE_LIST = ROOT / "benchmarks" / "gpu_image_packages.txt"
# The GPU machine's interpreter, for the requirements' environment markers.
TARGET = {
    "python_version": "3.12",
    "python_full_version": "3.12.3",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "platform_system": "Linux",
    "sys_platform": "linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
}
# Test requirements the GPU check does not carry, and the tests that use them.
LEFT_BEHIND = {
    "playwright": "the browser tests (tests/test_playground_browser*.py)",
    "kubernetes-validate": "the Kubernetes manifest tests (tests/test_k8s.py)",
}


def normalize(name: str) -> str:
    """PEP 503: case and runs of -_. do not matter."""
    return re.sub(r"[-_.]+", "-", name).lower()


def listed(path: Path) -> dict[str, str | None]:
    """One package a line, NAME or NAME==VERSION; # starts a comment."""
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    pairs = (line.partition("==") for line in lines if line)
    return {normalize(name.strip()): version.strip() or None for name, _, version in pairs}


def image_packages(path: Path = IMAGE_LIST) -> set[str]:
    return set(listed(path))


def image_versions(path: Path = IMAGE_LIST) -> dict[str, str]:
    """The image's packages whose version the list records (those that clash with ours)."""
    return {name: version for name, version in listed(path).items() if version}


def clashes(requirement: Requirement, versions: dict[str, str]) -> bool:
    """Whether the image holds the package at a version ``requirement`` rules out."""
    version = versions.get(normalize(requirement.name))
    return version is not None and not requirement.specifier.contains(version, prereleases=True)


def roots(pyproject: Path = ROOT / "pyproject.toml") -> list[Requirement]:
    """The project's dependencies and its test extra, with the project's own extras that
    the test extra names (``vae-service[onnx]``) replaced by what they hold, less
    ``LEFT_BEHIND``."""
    project = tomllib.loads(pyproject.read_text())["project"]
    extras = project["optional-dependencies"]

    def expand(specs: Iterable[str]) -> Iterator[Requirement]:
        for spec in specs:
            requirement = Requirement(spec)
            if normalize(requirement.name) == normalize(project["name"]):
                for extra in requirement.extras:
                    yield from expand(extras[extra])
            else:
                yield requirement

    wanted = expand([*project["dependencies"], *extras["test"]])
    return [r for r in wanted if normalize(r.name) not in LEFT_BEHIND]


def pins(constraints: Path = ROOT / "constraints.txt") -> dict[str, str]:
    """constraints.txt's NAME==VERSION lines, by normalized name."""
    found = {}
    for line in constraints.read_text().splitlines():
        name, sep, version = line.split("#", 1)[0].strip().partition("==")
        if sep:
            found[normalize(name)] = version.strip()
    return found


def applies(requirement: Requirement, extras: Iterable[str]) -> bool:
    """Whether ``requirement`` holds on the GPU machine for a package asked for with ``extras``."""
    marker: Marker | None = requirement.marker
    if marker is None:
        return True
    return any(marker.evaluate({**TARGET, "extra": extra}) for extra in ("", *extras))


def requirements_of(name: str, extras: Iterable[str]) -> Iterator[Requirement]:
    """The installed package's own requirements that apply, given the extras asked for."""
    for line in metadata.requires(name) or []:
        requirement = Requirement(line)
        if applies(requirement, extras):
            yield requirement


def closure(
    start: Iterable[Requirement], stop: set[str], versions: dict[str, str] | None = None
) -> dict[str, set[str]]:
    """Every package ``start`` needs (name -> the extras asked of it), following installed
    metadata, but not into packages in ``stop`` (their own needs are met already), unless
    ``versions`` says the one in ``stop`` is at a version the requirement rules out."""
    found: dict[str, set[str]] = {}
    todo = [r for r in start if applies(r, ())]
    while todo:
        requirement = todo.pop()
        name = normalize(requirement.name)
        if name in stop and not clashes(requirement, versions or {}):
            continue
        extras = set(requirement.extras)
        if name in found and extras <= found[name]:
            continue
        found[name] = found.get(name, set()) | extras
        todo.extend(requirements_of(name, found[name]))
    return found


def needed() -> dict[str, str]:
    """NAME -> locked version of every package to carry to the GPU machine."""
    locked = pins()
    wanted = closure(roots(), image_packages(), image_versions())
    unpinned = sorted(set(wanted) - set(locked))
    if unpinned:
        raise SystemExit(f"not in constraints.txt: {', '.join(unpinned)}; run scripts/lock.sh")
    return {name: locked[name] for name in sorted(wanted)}


def unmet(start: Iterable[Requirement], stop: set[str]) -> list[str]:
    """Requirements of ``start`` and of the packages it needs, but not of those in ``stop``
    (the image's own), that the installed versions do not satisfy, as readable lines;
    empty when all is well."""
    problems, seen = [], set()
    todo = [r for r in start if applies(r, ())]
    while todo:
        requirement = todo.pop()
        key = str(requirement)
        if key in seen:
            continue
        seen.add(key)
        try:
            version = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            problems.append(f"{requirement}: not installed")
            continue
        if not requirement.specifier.contains(version, prereleases=True):
            problems.append(f"{requirement}: {version} installed")
        if normalize(requirement.name) not in stop:
            todo.extend(requirements_of(requirement.name, requirement.extras))
    return sorted(problems)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["list", "check"])
    args = parser.parse_args(argv)
    if args.action == "list":
        print("\n".join(f"{name}=={version}" for name, version in needed().items()))
        return
    problems = unmet(roots(), image_packages())
    print("\n".join(problems) or "every requirement of the service and its tests is met")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
