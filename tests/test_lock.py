"""The hashed locks agree with the requirement files and with what is installed.

requirements.txt and requirements-dev.txt name the direct dependencies; requirements.lock and
requirements-dev.lock, written by `make lock` (pip-compile), pin the whole tree with hashes, and
the Makefile installs only the locks. So a requirement edited without `make lock` would never be
installed: these tests fail instead, and say which package to relock.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
RUNTIME_REQUIREMENTS = ROOT / "requirements.txt"
DEV_REQUIREMENTS = ROOT / "requirements-dev.txt"
RUNTIME_LOCK = ROOT / "requirements.lock"
DEV_LOCK = ROOT / "requirements-dev.lock"

PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>\S+)$")
HASH = re.compile(r"^--hash=sha256:[0-9a-f]{64}$")


@dataclass(frozen=True)
class Locked:
    version: str
    hashes: tuple[str, ...]


def direct_requirements(path: Path) -> list[Requirement]:
    """The requirements a requirement file names, following its `-r` includes."""
    found: list[Requirement] = []
    for raw in path.read_text().splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("-r "):
            found += direct_requirements(path.parent / line[3:].strip())
            continue
        assert not line.startswith("-"), f"{path.name}: unexpected option line {line!r}"
        found.append(Requirement(line))
    return found


def logical_lines(path: Path) -> list[str]:
    """The lock's entries, each with its continuation lines joined and comments dropped."""
    lines: list[str] = []
    current = ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or not stripped:
            if current:
                lines.append(current)
                current = ""
            continue
        current += " " + stripped.removesuffix("\\").strip()
        if not stripped.endswith("\\"):
            lines.append(current)
            current = ""
    if current:
        lines.append(current)
    return [line.strip() for line in lines]


def read_lock(path: Path) -> dict[str, Locked]:
    pins: dict[str, Locked] = {}
    for line in logical_lines(path):
        pin, *options = line.split()
        match = PIN.match(pin)
        assert match, f"{path.name}: {line[:80]!r} is not a `name==version` pin"
        name = canonicalize_name(match["name"])
        assert name not in pins, f"{path.name} pins {name} twice"
        bad = [option for option in options if not HASH.match(option)]
        assert not bad, f"{path.name}: {name} carries {bad} besides its hashes"
        pins[name] = Locked(version=match["version"], hashes=tuple(options))
    return pins


@pytest.fixture(scope="module")
def runtime_lock() -> dict[str, Locked]:
    return read_lock(RUNTIME_LOCK)


@pytest.fixture(scope="module")
def dev_lock() -> dict[str, Locked]:
    return read_lock(DEV_LOCK)


def extra_dependencies(requirement: Requirement) -> list[Requirement]:
    """What the requirement's extras (`psycopg[binary]`) add, read from the installed metadata."""
    added: list[Requirement] = []
    for extra in sorted(requirement.extras):
        for text in metadata.requires(requirement.name) or []:
            dependency = Requirement(text)
            if dependency.marker and dependency.marker.evaluate({"extra": extra}):
                if not dependency.marker.evaluate({"extra": ""}):
                    added.append(dependency)
    return added


def unlocked(requirements: list[Requirement], lock: dict[str, Locked]) -> list[str]:
    """Each requirement the lock misses, or holds at a version the requirement excludes."""
    problems: list[str] = []
    for requirement in requirements:
        locked = lock.get(canonicalize_name(requirement.name))
        if locked is None:
            problems.append(f"{requirement} is not in the lock")
        elif not requirement.specifier.contains(locked.version, prereleases=True):
            problems.append(f"{requirement} but the lock holds {locked.version}")
    return problems


def test_every_direct_runtime_requirement_is_in_the_runtime_lock_at_a_version_it_allows(runtime_lock):
    requirements = direct_requirements(RUNTIME_REQUIREMENTS)
    assert len(requirements) > 10
    requirements += [added for requirement in requirements for added in extra_dependencies(requirement)]
    assert unlocked(requirements, runtime_lock) == [], "requirements.txt changed without `make lock`"


def test_every_direct_dev_requirement_is_in_the_dev_lock_at_a_version_it_allows(dev_lock):
    requirements = direct_requirements(DEV_REQUIREMENTS)
    assert {"django", "pytest", "pip-tools"} <= {canonicalize_name(r.name) for r in requirements}
    requirements += [added for requirement in requirements for added in extra_dependencies(requirement)]
    assert unlocked(requirements, dev_lock) == [], "requirements-dev.txt changed without `make lock`"


def test_the_psycopg_binary_extra_is_locked_as_its_own_package(runtime_lock):
    # pip-compile --strip-extras writes `psycopg[binary]` as psycopg plus psycopg-binary, so the
    # runtime lock can constrain the dev lock (a constraint may not carry extras).
    assert runtime_lock["psycopg-binary"].version == runtime_lock["psycopg"].version


@pytest.mark.parametrize("lock_path", [RUNTIME_LOCK, DEV_LOCK], ids=lambda path: path.name)
def test_every_lock_line_pins_one_version_and_carries_a_sha256_hash(lock_path):
    lock = read_lock(lock_path)
    assert len(lock) > 40
    assert [name for name, locked in lock.items() if not locked.hashes] == []


@pytest.mark.parametrize("lock_path", [RUNTIME_LOCK, DEV_LOCK], ids=lambda path: path.name)
def test_every_dependency_of_a_locked_package_is_locked_too(lock_path):
    # The whole tree is pinned, transitive packages included: redis, asgiref, autobahn, twisted,
    # msgpack, oauthlib... Read from the installed metadata, markers evaluated for this Python.
    lock = read_lock(lock_path)
    missing: list[str] = []
    for name in lock:
        for text in metadata.requires(name) or []:
            dependency = Requirement(text)
            if dependency.marker is None or dependency.marker.evaluate({"extra": ""}):
                missing += [f"{name} needs {problem}" for problem in unlocked([dependency], lock)]
    assert missing == []
    assert {"redis", "asgiref", "autobahn", "twisted", "msgpack", "oauthlib"} <= lock.keys()


def test_the_dev_lock_holds_every_runtime_package_at_its_runtime_version(runtime_lock, dev_lock):
    differing = {
        name: (locked.version, dev_lock[name].version if name in dev_lock else None)
        for name, locked in runtime_lock.items()
        if name not in dev_lock or dev_lock[name] != locked
    }
    assert differing == {}, "versions (or hashes) differ: `make lock` compiles the dev lock under the runtime lock"


def test_the_installed_packages_are_the_locked_versions(dev_lock):
    # `make test` installs requirements-dev.lock; a stamp reinstalls when the lock changes.
    differing = {
        name: (installed_version(name), locked.version)
        for name, locked in dev_lock.items()
        if installed_version(name) != Version(locked.version)
    }
    assert differing == {}, "installed differs from requirements-dev.lock: `make install-dev`"


def installed_version(name: str) -> Version | None:
    try:
        return Version(metadata.version(name))
    except metadata.PackageNotFoundError:
        return None


@pytest.mark.parametrize("lock_path", [RUNTIME_LOCK, DEV_LOCK], ids=lambda path: path.name)
def test_the_locks_were_compiled_for_the_python_running_the_suite(lock_path):
    # Environment markers were resolved for CPython 3.11 on Linux x86_64: another Python could
    # need other packages than those locked.
    header = lock_path.read_text().splitlines()[1]
    assert header.endswith(f"with Python {sys.version_info.major}.{sys.version_info.minor}")
    assert "make lock" in lock_path.read_text()[:300]
