"""The repository stands alone: everything the tests, examples and benchmarks read is inside it."""

import re
import subprocess

import pytest

from .conftest import DATA, ROOT

# A path that climbs out of the repository: `../shared`, `ROOT.parent`, `parents[2]` from a top-level
# folder, or a machine-specific absolute path.
OUTSIDE = re.compile(r"\.\./shared|\bshared/data\b|\bROOT\.parent\b|parents\[[2-9]\]|/work/|STAGEWISE_SHARED_DATA")


def _tracked_files() -> list[str]:
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True)
    return [name for name in listed.stdout.splitlines() if not name.startswith("data/")]


def test_no_file_names_a_path_outside_the_repository():
    this = "tests/test_repository.py"
    offenders = []
    for name in _tracked_files():
        path = ROOT / name
        if name == this or not path.is_file() or path.stat().st_size > 2_000_000:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        offenders += [f"{name}:{number}: {line.strip()}" for number, line in enumerate(text.splitlines(), 1)
                      if OUTSIDE.search(line)]
    assert offenders == []


@pytest.mark.parametrize("folder, files", [
    ("routellm", ["gsm8k_responses.csv", "gsm8k_contaminated_prompts.jsonl"]),
    ("routerbench", ["arc_challenge_train.csv", "arc_challenge_test.csv"]),
    ("banking77", ["train.csv", "test.csv", "categories.json"]),
])
def test_each_dataset_has_its_licence_and_provenance(folder, files):
    assert (DATA / folder / "LICENSE").stat().st_size > 500
    assert all((DATA / folder / name).stat().st_size > 0 for name in files)
    readme = (DATA / "README.md").read_text()
    assert f"## {folder}/" in readme and "commit" in readme.split(f"| `{folder}/` |")[1].split("\n")[0]
