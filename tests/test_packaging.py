"""
The source distribution is complete and the wheel is lean (issue 10): build
the sdist from a copy of this tree, unpack it, check it holds what its
tests read (docs, vectors, the lab's benchmark worker) and the metadata a
PyPI user looks at, build the wheel from it, and run a fast slice of the
unpacked tests against the unpacked package.
"""

from __future__ import annotations

import email.parser
import glob
import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: quick tests that read files outside the package: vectors, docs
FAST_SLICE = [
    "tests/test_tunnel_vectors.py",
    "tests/test_tunnel_noise.py",
    "tests/test_streams_machines.py",
    "tests/test_trust_outgoing.py",
    "tests/test_tap.py",
]


def _build(kind: str, source: str, out: str) -> str:
    """Build an sdist or a wheel of ``source`` into ``out``, offline, with the installed setuptools."""
    spec = importlib.util.find_spec("build")
    # A checkout's own build/ directory (left by "pip install .") is a namespace
    # package of that name, not the build frontend: it has no origin.
    if spec is not None and spec.origin is not None:
        argv = [sys.executable, "-m", "build", f"--{kind}", "--no-isolation", "--outdir", out, source]
    else:
        hook = "build_sdist" if kind == "sdist" else "build_wheel"
        argv = [sys.executable, "-c", f"import sys; from setuptools import build_meta; print(build_meta.{hook}(sys.argv[1]))", out]
    run = subprocess.run(argv, cwd=source, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    [built] = glob.glob(os.path.join(out, "*.tar.gz" if kind == "sdist" else "*.whl"))
    return built


@pytest.fixture(scope="module")
def unpacked(tmp_path_factory):
    work = tmp_path_factory.mktemp("sdist")
    source = str(work / "source")
    # A copy, so that building never writes into the working tree.
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", "__pycache__", "*.egg-info", ".venv", "venv", "build", "dist", ".pytest_cache", "dropin.cache", "*.pyc"))
    sdist = _build("sdist", source, str(work / "out"))
    with tarfile.open(sdist) as tar:
        tar.extractall(work / "unpacked", filter="data")
    [root] = glob.glob(str(work / "unpacked" / "pilotproto-*"))
    return root


def test_the_sdist_holds_what_its_tests_need(unpacked):
    for path in ("LICENSE", "README.md", "docs/cli.md", "docs/streams.md", "docs/trust-request.dot",
                 "tests/vectors/tunnel_noise_ik.json", "tests/vectors/tunnel_pilot_v1.json", "tests/conftest.py",
                 "tests/helpers.py", "tests/lab/conftest.py", "tests/integration/conftest.py",
                 "benchmarks/stream_throughput.py", "twisted/plugins/pilot_plugin.py", "pilotproto/cli/main.py"):
        assert os.path.isfile(os.path.join(unpacked, path)), path
    assert not glob.glob(os.path.join(unpacked, "**", "__pycache__"), recursive=True)


def test_the_metadata_names_license_versions_status_and_topics(unpacked):
    with open(os.path.join(unpacked, "PKG-INFO")) as f:
        info = email.parser.Parser().parse(f)
    classifiers = info.get_all("Classifier")
    for wanted in ("License :: OSI Approved :: MIT License", "Framework :: Twisted", "Programming Language :: Python :: 3.11",
                   "Development Status :: 3 - Alpha", "Topic :: System :: Networking"):
        assert wanted in classifiers, classifiers
    assert "LICENSE" in info.get_all("License-File")
    assert "MIT License" in open(os.path.join(unpacked, "LICENSE")).read()


def _wheel_contents(source: str, out: str) -> list[str]:
    """The files ``pip install .`` would install: a real wheel if the ``wheel``
    package is here to build one, else what setuptools' build_py puts in it."""
    if importlib.util.find_spec("wheel") is not None:
        wheel = _build("wheel", source, out)
        return [n for n in zipfile.ZipFile(wheel).namelist() if ".dist-info/" not in n]
    run = subprocess.run([sys.executable, "-c", "import setuptools; setuptools.setup()", "build_py", "--build-lib", out],
                         cwd=source, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    return [os.path.relpath(os.path.join(d, f), out).replace(os.sep, "/") for d, _, files in os.walk(out) for f in files]


def test_the_wheel_is_only_the_package_and_its_plugin(unpacked, tmp_path):
    names = _wheel_contents(unpacked, str(tmp_path / "wheel"))
    assert {name.split("/")[0] for name in names} == {"pilotproto", "twisted"}, sorted(names)[:20]
    assert all(not name.startswith("twisted/") or name.startswith("twisted/plugins/") for name in names)
    assert "twisted/plugins/pilot_plugin.py" in names and "pilotproto/cli/main.py" in names


def test_a_fast_slice_of_the_sdist_tests_passes_on_the_unpacked_package(unpacked):
    env = dict(os.environ, PYTHONPATH=unpacked)
    env.pop("PILOT_HOME", None)
    where = subprocess.run([sys.executable, "-c", "import pilotproto; print(pilotproto.__file__)"],
                           cwd=unpacked, env=env, capture_output=True, text=True, timeout=60)
    assert where.stdout.startswith(unpacked), where
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *FAST_SLICE],
                         cwd=unpacked, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
