"""README.md stays true: its images and files exist, and every flag it shows a script taking is in that
script's --help."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_linked_images_and_files_exist():
    paths = set(re.findall(r"\]\(([^)#\s]+)\)", README))  # markdown links and images
    paths |= set(re.findall(r"`((?:assets|config|tests)/[\w./-]+|[\w-]+\.(?:py|sh))`", README))
    assert paths
    missing = [p for p in sorted(paths) if not p.startswith("http") and not (ROOT / p).exists()]
    assert not missing, f"README names files that do not exist: {missing}"


def readme_commands():
    """(script, flags) for every `python X.py ...` command in the README's code blocks."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README, flags=re.S):
        for line in block.splitlines():
            for script, args in re.findall(r"python3? ([\w]+\.py)((?: [^&#|]*)?)", line):
                commands.append((script, re.findall(r"--(\w+)", args)))
    return commands


@pytest.mark.parametrize("script", sorted({s for s, _ in readme_commands()}))
def test_readme_flags_are_in_help(script):
    help_text = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True,
                               check=True).stdout
    flags = {f for s, fs in readme_commands() if s == script for f in fs}
    # train.py's --help lists config keys ("key = default"), the others argparse flags ("--key")
    unknown = [f for f in sorted(flags) if f"--{f}" not in help_text and not re.search(rf"^\s+{f}\s+=", help_text, re.M)]
    assert not unknown, f"README shows {script} flags its --help does not list: {unknown}"
