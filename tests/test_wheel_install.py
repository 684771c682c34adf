"""A wheel install (``pip install .``, not ``-e``) carries the example YAMLs as fairseq_ecg/examples/, and
the experiment runner finds them there from any working directory; the sdist carries examples/ too
(issue 21 item 4). The repository keeps its one copy at the top level."""
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = {path.relative_to(ROOT / "examples").as_posix(): path.read_bytes()
            for path in sorted((ROOT / "examples").rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """The files git would ship (tracked, or new and not ignored), copied: the builds leave no build/ or
    egg-info in the shared checkout, and no stale build/lib of an earlier build reaches the wheel."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, capture_output=True)
    if listed.returncode:  # not a git checkout (an unpacked sdist): build in place
        return ROOT
    copy = tmp_path_factory.mktemp("source")
    for name in filter(None, listed.stdout.decode().split("\0")):
        if (ROOT / name).is_file():  # a tracked file deleted in the work tree is not shipped
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, copy / name)
    return copy


def run(*command, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{command}:\n{result.stdout}\n{result.stderr}"
    return result


def test_wheel_ships_examples_and_the_runner_uses_them(source, tmp_path):
    assert any(name.startswith("pretrain/") for name in EXAMPLES) and any(name.startswith("finetune/") for name in EXAMPLES)
    run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
        "-w", str(tmp_path / "wheels"), str(source))
    [wheel] = (tmp_path / "wheels").glob("fairseq_ecg-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = {name.removeprefix("fairseq_ecg/examples/"): archive.read(name)
                   for name in archive.namelist() if name.startswith("fairseq_ecg/examples/")}
        assert not any(name.startswith("examples/") for name in archive.namelist())  # no top-level package
    assert sorted(shipped) == sorted(EXAMPLES)
    assert all(shipped[name] == EXAMPLES[name] for name in EXAMPLES), "the wheel's YAMLs differ from examples/"

    site = tmp_path / "site"
    run(sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), str(wheel))
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "data").mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(site)}
    packaged = site / "fairseq_ecg" / "examples"
    run(sys.executable, "-c", f"""
from pathlib import Path
import fairseq_ecg.experiments.runner as experiments
assert Path(experiments.__file__).is_relative_to({str(site)!r}), experiments.__file__
assert experiments.EXAMPLES_DIR == Path({str(packaged)!r}), experiments.EXAMPLES_DIR
assert (experiments.EXAMPLES_DIR / "pretrain" / "w2v.yaml").is_file()
""", cwd=elsewhere, env=env)
    # a dry run plans the demo matrix and reads its YAMLs (for the time estimate), training nothing
    dry = run(sys.executable, "-m", "fairseq_ecg.experiments", "--data", "data", "--out", "results",
              "--preset", "demo", "--dry-run", cwd=elsewhere, env=env)
    assert f"--config-dir {packaged / 'pretrain'} " in dry.stdout
    assert f"--config-dir {packaged / 'finetune'} " in dry.stdout
    assert str(ROOT / "examples") not in dry.stdout

    # neither the packaged copy nor a repository's examples/: one line saying so
    shutil.rmtree(packaged)
    missing = subprocess.run([sys.executable, "-m", "fairseq_ecg.experiments", "--data", "data", "--out", "results",
                              "--dry-run"], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert missing.returncode != 0 and missing.stdout == ""
    [line] = missing.stderr.strip().splitlines()[-1:]
    assert "no YAML configs" in line and str(packaged) in line and str(site / "examples") in line, missing.stderr


def test_sdist_carries_examples(source, tmp_path):
    run(sys.executable, "setup.py", "--quiet", "sdist", "--dist-dir", str(tmp_path), cwd=source)
    [sdist] = tmp_path.glob("fairseq_ecg-*.tar.gz")
    with tarfile.open(sdist) as archive:
        top = archive.getnames()[0].split("/")[0]
        shipped = {member.name.removeprefix(f"{top}/examples/"): archive.extractfile(member).read()
                   for member in archive.getmembers() if member.isfile() and member.name.startswith(f"{top}/examples/")}
    assert shipped == EXAMPLES
