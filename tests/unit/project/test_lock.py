"""requirements.lock agrees with pyproject.toml: every requirement pinned, every pin satisfying it.

The lock is a pip constraints file (scripts/test.sh and scripts/run-bot.sh install with
``-c requirements.lock``); a requirement added to pyproject.toml without refreshing the lock would
install whatever version pip finds that day, which is what the lock is there to prevent.
"""

from __future__ import annotations

import tomllib
from importlib import metadata

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version
from paths import ROOT


def read_lock() -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for number, raw in enumerate((ROOT / "requirements.lock").read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        requirement = Requirement(line)
        specifiers = list(requirement.specifier)
        assert len(specifiers) == 1 and specifiers[0].operator == "==", f"line {number}: not an exact pin: {raw!r}"
        assert not requirement.extras and requirement.marker is None, f"line {number}: constraints take no extras or markers"
        version = Version(specifiers[0].version)
        assert version.local is None, f"line {number}: a local label ({raw!r}) would refuse the CPU or the CUDA build"
        name = canonicalize_name(requirement.name)
        assert name not in pins, f"line {number}: {name} pinned twice"
        pins[name] = version
    return pins


def project_requirements() -> dict[str, list[Requirement]]:
    """Dependencies and every extra, by group ('' for the main dependencies)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    groups = {"": project["dependencies"], **project.get("optional-dependencies", {})}
    return {group: [Requirement(text) for text in texts] for group, texts in groups.items()}


def test_the_lock_is_exact_pins_only():
    pins = read_lock()
    assert len(pins) > 50 and Version("2.0") <= pins["torch"]  # the whole tree, not just the direct dependencies


@pytest.mark.parametrize("group", sorted(project_requirements()), ids=lambda group: group or "dependencies")
def test_every_project_requirement_is_pinned_within_its_range(group):
    pins = read_lock()
    for requirement in project_requirements()[group]:
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement} ({group or 'dependencies'}) is not in requirements.lock: run scripts/lock.sh"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"requirements.lock pins {name}=={pins[name]}, outside {requirement} from pyproject.toml")


def test_installed_locked_packages_need_only_locked_versions():
    """The transitive part: what each locked package (installed at its pin) requires is pinned too, in range.

    Read from the installed packages' metadata, so it covers what this environment has installed
    (the CPU tests do not install the fp8/cuda extras)."""
    pins = read_lock()
    wanted_extras: dict[str, set[str]] = {}
    for requirements in project_requirements().values():
        for requirement in requirements:
            wanted_extras.setdefault(canonicalize_name(requirement.name), set()).update(requirement.extras)
    checked = 0
    for name, pinned in pins.items():
        try:
            distribution = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        if Version(Version(distribution.version).public) != pinned:
            continue  # another version installed by hand: its metadata says nothing about the pinned one
        checked += 1
        for text in distribution.requires or []:
            requirement = Requirement(text)
            environments = [{"extra": extra} for extra in wanted_extras.get(name, set()) | {""}]
            if requirement.marker is not None and not any(requirement.marker.evaluate(env) for env in environments):
                continue
            dependency = canonicalize_name(requirement.name)
            assert dependency in pins, f"{name}=={pinned} requires {requirement}, which requirements.lock lacks"
            assert requirement.specifier.contains(pins[dependency], prereleases=True), (
                f"{name}=={pinned} requires {requirement}, but requirements.lock pins {dependency}=={pins[dependency]}")
    assert checked > 50
