"""README.md and the study pages assets/<study>/README.md stay true: every number in their results is
recomputed from the saved output it comes from, every command they show runs the scripts with flags the
scripts have, and every file they name exists.

How a results table (or a sentence with numbers) declares its sources: it is generated. Write a function in
tools/tables.py that reads the saved outputs (JSON, JSONL, TXT under assets/) and returns the markdown, put
`<!-- tables.py: NAME -->` and `<!-- /tables.py -->` on the lines around its place in the page, and run
`python tools/tables.py` to fill it in. test_generated_blocks_equal_their_sources regenerates every block of
every page and compares it with the text, at the printed precision. ablate.py writes its own block (the
command and the table it printed, between ablate.PAGE_BEGIN and ablate.PAGE_END); it is recomputed from the
ablate_runs.json beside the page. Numbers outside generated blocks are refused in results prose (decimals
and percentages; CONSTANTS lists the settings that may appear), so a new figure has to be generated too.
"""
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import tables  # noqa: E402

sys.path.insert(0, str(ROOT))
import ablate  # noqa: E402

README = (ROOT / "README.md").read_text()
STUDIES = sorted(p.parent.name for p in (ROOT / "assets").glob("*/README.md"))
PAGES = {"README.md": README, **{f"assets/{s}/README.md": (ROOT / "assets" / s / "README.md").read_text() for s in STUDIES}}
# settings and facts of the set-up, not results: they may appear in prose
CONSTANTS = {"0.02", "1e-3", "1e-4", "3.5", "±10%", "10%", "80%", "2.13", "3.11", "1.0", "120 s", "600 s", "2000 s"}


def generated_blocks(text):
    return [(m.group(2), m.group(3)) for m in tables.BLOCK.finditer(text)]


def without_generated(text):
    """The page without its generated blocks, ablate.py's block and code blocks: the prose and hand tables."""
    text = tables.BLOCK.sub("", text)
    text = re.sub(re.escape(ablate.PAGE_BEGIN) + ".*?" + re.escape(ablate.PAGE_END), "", text, flags=re.S)
    return re.sub(r"```.*?```", "", text, flags=re.S)


def results_part(name, text):
    """The part of a page that reports results: README's Results section, a study page whole."""
    return text.split("\n## Results", 1)[1].split("\n## ", 1)[0] if name == "README.md" else text


@pytest.mark.parametrize("name", PAGES)
def test_generated_blocks_equal_their_sources(name):
    blocks = generated_blocks(PAGES[name])
    for block, text in blocks:
        assert text == getattr(tables, block)(), f"{name}: block '{block}' differs from its saved outputs " \
                                                 f"(python tools/tables.py rewrites it)"


@pytest.mark.parametrize("study", [s for s in STUDIES if ablate.PAGE_BEGIN in PAGES[f"assets/{s}/README.md"]])
def test_ablate_block_equals_its_runs(study):
    """ablate.py's block: its table is what ablate.make_table prints for the saved runs (means, std, min, max,
    differences and times recomputed from every run), and its command names every variant and seed saved."""
    page = PAGES[f"assets/{study}/README.md"]
    block = page.split(ablate.PAGE_BEGIN, 1)[1].split(ablate.PAGE_END, 1)[0]
    command, table = re.fullmatch(r"\n```bash\n(.*?)\n```\n\n(.*)", block, flags=re.S).groups()
    assert table == tables.ablate_section(f"assets/{study}/ablate_runs.json")
    saved = json.loads((ROOT / "assets" / study / "ablate_runs.json").read_text())
    args = ablate.parse_args(shlex.split(command)[2:])[1]
    assert {r["name"] for r in saved["rows"] if "reference" not in r} <= set(args.variants.split(","))
    assert set(saved["seeds"]) <= {int(s) for s in args.seeds.split(",")}
    assert args.assets == f"assets/{study}"


@pytest.mark.parametrize("name", PAGES)
def test_results_prose_has_no_hand_written_figures(name):
    """Decimals and percentages in results prose and hand-made tables must come from a generated block."""
    text = without_generated(results_part(name, PAGES[name]))
    text = re.sub(r"`[^`]*`|\([^)]*\.(?:png|md|txt|json)\)", "", text)  # code spans and link targets
    figures = set(re.findall(r"[±]?\d+(?:\.\d+)?%|\b\d+\.\d+\b|\d+e-\d+|\b\d[\d,]* ?(?:MiB|GB/s|ms|s|tok/s|×)(?!\w)",
                             text)) - CONSTANTS
    assert not figures, f"{name}: figures written by hand (generate them with tools/tables.py): {sorted(figures)}"
    hand_tables = [line for line in text.splitlines() if line.startswith("| ") and re.search(r"\d\.\d", line)]
    assert not hand_tables, f"{name}: a table of results written by hand: {hand_tables[0]}"


def test_every_result_has_its_command_and_saved_output():
    """Each README results section: its command, a generated table, and a link to its study page; each study
    page: its commands and the raw outputs it generates its tables from."""
    results = README.split("\n## Results", 1)[1].split("\n## ", 1)[0]
    sections = re.findall(r"^### (.+?)\n(.*?)(?=^### |\Z)", results, flags=re.S | re.M)
    assert len(sections) >= 4
    for title, text in sections:
        assert "```bash" in text, f"README section '{title}' has no command"
        assert generated_blocks(text), f"README section '{title}' has no table generated from saved outputs"
        pages = re.findall(r"\]\((assets/\w+/README\.md)\)", text)
        assert pages and all((ROOT / p).is_file() for p in pages), f"README section '{title}' links no study page"
    for study in STUDIES:
        page = PAGES[f"assets/{study}/README.md"]
        assert "```bash" in page and (generated_blocks(page) or ablate.PAGE_BEGIN in page), study


def saved_benchmark_commands():
    commands = []
    for path in (ROOT / "assets").rglob("*.json"):
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError:
            continue
        if isinstance(data, dict) and str(data.get("command", "")).startswith("python benchmark"):
            commands.append(data["command"])
        if isinstance(data, dict):  # a report of runs made by several commands (benchmark_recall.py)
            commands += [c for c in data.get("run_commands", []) if c.startswith("python benchmark")]
    return commands


def without_outputs(command):
    """A command less its output paths (--out, --out_dir, --plot): where a run wrote is not what it measured."""
    return re.sub(r" --(?:out|out_dir|plot) \S+", "", command.split("  #")[0].strip())


def page_commands(text):
    return [line.strip() for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S) for line in block.splitlines()
            if line.strip()]


@pytest.mark.parametrize("name", PAGES)
def test_benchmark_commands_are_the_saved_ones(name):
    """A benchmark command a page shows is the command saved in one of the outputs (up to its output paths)."""
    saved = {without_outputs(c) for c in saved_benchmark_commands()}
    for command in page_commands(PAGES[name]):
        if command.startswith("python benchmark") and "--write_random" not in command:  # that mode only writes a file
            assert without_outputs(command) in saved, f"{name}: no saved output was made by: {command}"


@pytest.mark.parametrize("name", PAGES)
def test_linked_images_and_files_exist(name):
    text, base = PAGES[name], (ROOT / name).parent
    links = set(re.findall(r"\]\(([^)#\s]+)\)", text))
    named = set(re.findall(r"`((?:assets|config|tests|tools)/[\w./-]+|[\w-]+\.(?:py|sh))`", text))
    local = set(re.findall(r"`([\w./-]+\.(?:json|jsonl|txt|md|png|log))`", text)) - named if name != "README.md" else set()
    assert links | named | local
    missing = [p for p in sorted(links) if not p.startswith("http") and not (base / p).exists()]
    missing += [p for p in sorted(named) if not (ROOT / p).exists()]
    missing += [p for p in sorted(local) if "<" not in p and not (base / p).exists() and not (ROOT / p).exists()]
    assert not missing, f"{name} names files that do not exist: {missing}"


@pytest.mark.parametrize("name", PAGES)
def test_commands_run_scripts_that_exist(name):
    scripts = {s for line in page_commands(PAGES[name]) for s in re.findall(r"(?:python3?|bash) (\S+\.(?:py|sh))", line)}
    missing = sorted(s for s in scripts if not (ROOT / s).is_file())
    assert not missing, f"{name} runs scripts that are not in the repository: {missing}"


def readme_commands():
    """(script, flags) for every `python X.py ...` command in the code blocks of every page."""
    commands = []
    for text in PAGES.values():
        for line in page_commands(text):
            for script, args in re.findall(r"python3? ((?:tools/)?[\w]+\.py)((?: [^&#|>]*)?)", line):
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
    assert not unknown, f"a page shows {script} flags its --help does not list: {unknown}"


def test_readme_is_a_short_users_document():
    assert len(README.splitlines()) <= 275
    narration = re.compile(r"\bsweep(?:s)? (?:ran|were)|side by side on|earlier (?:run|sweep)|later run|"
                           r"the (?:first|second|third) (?:run|sweep)", re.I)
    for name, text in PAGES.items():
        assert not narration.search(text), f"{name} narrates how runs were scheduled: {narration.search(text)[0]!r}"
