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
    if script == "ablate.py":  # its extra --key=value arguments are train.py's
        help_text += subprocess.run([sys.executable, "train.py", "--help"], cwd=ROOT, capture_output=True,
                                    text=True, check=True).stdout
    flags = {f for s, fs in readme_commands() if s == script for f in fs}
    # train.py's --help lists config keys ("key = default"), the others argparse flags ("--key")
    unknown = [f for f in sorted(flags) if f"--{f}" not in help_text and not re.search(rf"^\s+{f}\s+=", help_text, re.M)]
    assert not unknown, f"README shows {script} flags its --help does not list: {unknown}"


def results_sections():
    """(title, text) of every ### subsection of the README's Results section."""
    results = README.split("\n## Results", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^### (.+?)\n(.*?)(?=^### |\Z)", results, flags=re.S | re.M)


def test_every_result_has_its_command_and_saved_output():
    sections = results_sections()
    assert len(sections) >= 3
    for title, text in sections:
        if "|" not in text and "![" not in text:
            continue  # prose only
        assert "```bash" in text, f"README section '{title}' shows numbers without the command that made them"
        outputs = [p.rstrip(".") for p in re.findall(r"assets/[\w./-]+", text) if not p.endswith(".png")]
        assert any((ROOT / p).is_file() for p in outputs), f"README section '{title}' names no raw output in assets/"
        missing = [p for p in outputs if not (ROOT / p).exists()]
        assert not missing, f"README section '{title}' names missing files: {missing}"
