"""Reports regenerated from the numbers (issue 31): a real tiny study (none vs cluster masking, 2 seeds,
local trial processes) reported by `maskvlp sweep-report`, whose trial-metrics.csv alone writes
comparison.md again byte for byte, with runs/ and the Optuna storage moved away; the cluster arm's mask
picture drawn and kept; a report's generated block written by `--into` and checked against its table;
and every committed report under reports/ that has a generated block checked the same way."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from maskvlp.cli import main
from maskvlp.sweep.regenerate import END, START, check_report

from .sweeping import tiny_base, tiny_shards, write_sweep

SETUP = "# A study\n\nSetup text, written by hand.\n\n## Results\n\n"


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A finished 4-trial study with a compare: section, reported into `report/`."""
    tmp = tmp_path_factory.mktemp("regen")
    shards = tiny_shards(tmp_path_factory)
    runs = tmp / "runs"
    space = {
        "strategy": {
            "choices": {
                "none": {"masking.strategy": "none"},
                "cluster": {"masking.strategy": "cluster", "masking.ratio": 0.5},
            }
        },
        "train.seed": {"type": "categorical", "choices": [0, 1]},
    }
    compare = {
        "group": "strategy",
        "seeds": "train.seed",
        "claims": ["cluster > none"],
        "claim_metrics": ["zeroshot/objects/top1"],
        "target_effect": 0.064,
    }
    base = tiny_base(shards, runs, **{"train.samples": 128})
    path = write_sweep(
        tmp / "regen.yaml", base, name="regen", space=space, sampler={"name": "grid"}, n_trials=4, compare=compare
    )
    assert main(["sweep", str(path), "--params", "params.yaml", "--quiet"]) == 0
    report = tmp / "report"
    assert main(["sweep-report", "regen", "--runs-dir", str(runs), "--out", str(report)]) == 0
    return tmp, runs, path, report


def test_the_committed_table_alone_writes_the_comparison_again_byte_for_byte(study, tmp_path, capsys):
    tmp, runs, sweep_file, report = study
    table = report / "trial-metrics.csv"
    rows = table.read_text().splitlines()
    assert rows[0].startswith("group,budget,seed,run,left_out,reevaluated,")
    assert len(rows) == 5 and sorted(r.split(",")[0] for r in rows[1:]) == ["cluster", "cluster", "none", "none"]
    # one row per trial, the values of its own record at full precision
    header = rows[0].split(",")
    for line in rows[1:]:
        cells = dict(zip(header, line.split(",")))
        record = json.loads((Path(cells["run"]) / "result.json").read_text())
        assert float(cells["zeroshot/objects/top1"]) == record["eval"]["zeroshot/objects/top1"]
        assert (
            float(cells["wall_s"]) == record["wall_s"]
            and float(cells["mask_ratio"]) == record["masking"]["mean_mask_ratio"]
        )
    comparison = json.loads((report / "comparison.json").read_text())
    assert comparison["masks"] == {"cluster": "masks-cluster.png"}  # the cluster arm only
    assert (report / "masks-cluster.png").stat().st_size > 10_000 and not (report / "masks-none.png").exists()
    md = (report / "comparison.md").read_text()
    assert "![masks: cluster](masks-cluster.png)" in md and "![metric vs compute](comparison.png)" in md
    assert "| train time (s) | mask ratio | coverage |" in md

    moved = tmp / "runs-elsewhere"  # no runs/, no study.journal: only the table and the sweep file
    runs.rename(moved)
    try:
        again = tmp_path / "again"
        args = ["sweep-report", "regen", "--runs-dir", str(runs), "--from-metrics", str(table), "--out", str(again)]
        assert main(args) == 2  # the study folder is gone: its compare: section must come from the sweep file
        assert "--sweep-file" in capsys.readouterr().err
        assert main([*args, "--sweep-file", str(sweep_file)]) == 0
    finally:
        moved.rename(runs)
    assert (again / "comparison.md").read_bytes() == (report / "comparison.md").read_bytes()
    assert (again / "trial-metrics.csv").read_bytes() == table.read_bytes()
    assert (again / "masks-cluster.png").read_bytes() == (report / "masks-cluster.png").read_bytes()  # kept, linked
    assert (again / "comparison.png").stat().st_size > 10_000
    # and in place (the default folder: the table's own), again the same bytes
    before = (report / "comparison.md").read_bytes()
    assert main(["sweep-report", "regen", "--from-metrics", str(table), "--sweep-file", str(sweep_file)]) == 0
    assert (report / "comparison.md").read_bytes() == before
    # a sweep file of another study is refused
    other = tmp_path / "other.yaml"
    other.write_text(sweep_file.read_text().replace("name: regen", "name: other"))
    assert main(["sweep-report", "regen", "--from-metrics", str(table), "--sweep-file", str(other)]) == 2
    assert "its study is 'other', not 'regen'" in capsys.readouterr().err


def test_into_fills_a_reports_generated_block_and_the_check_sees_any_edit(study, tmp_path, capsys):
    tmp, runs, sweep_file, report = study
    table = report / "trial-metrics.csv"
    doc = tmp_path / "docs" / "study.md"
    doc.parent.mkdir()
    doc.write_text(SETUP + f"{START}\nold numbers\n{END}\n\nMore setup text.\n")
    base = ["sweep-report", "regen", "--from-metrics", str(table), "--sweep-file", str(sweep_file)]
    assert main([*base, "--out", str(tmp_path / "out"), "--into", str(doc)]) == 0
    text = doc.read_text()
    assert text.startswith(SETUP + START + "\n<!-- maskvlp sweep-report regen --from-metrics ")
    assert text.endswith(f"{END}\n\nMore setup text.\n") and "old numbers" not in text
    md = (tmp_path / "out" / "comparison.md").read_text()
    body = md.split("\n\n", 1)[1].strip()  # comparison.md without its title, the links from docs/ to out/
    assert body.replace("](", "](../out/") in text
    assert "](../out/masks-cluster.png)" in text and "cluster > none" in text
    found, expected = check_report(doc)
    assert found == expected

    # a number edited by hand in the block: the check fails
    cell = next(line for line in text.splitlines() if line.startswith("| cluster | 2 |"))
    doc.write_text(text.replace(cell, cell.replace("| 2 |", "| 3 |", 1)))
    found, expected = check_report(doc)
    assert found != expected and "| cluster | 2 |" in expected
    # the table changed under the block (another trial's value): the check fails too
    doc.write_text(text)
    changed = tmp_path / "out" / "trial-metrics.csv"
    rows = list(csv.DictReader(changed.open()))
    rows[0]["zeroshot/objects/top1"] = repr(float(rows[0]["zeroshot/objects/top1"]) + 0.25)
    with changed.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    found, expected = check_report(doc)
    assert found != expected

    # refused before anything is written: no markers, two blocks, no sweep file to name
    bare = tmp_path / "bare.md"
    bare.write_text(SETUP)
    assert main([*base, "--out", str(tmp_path / "o2"), "--into", str(bare)]) == 1
    assert "no generated block: put the two lines" in capsys.readouterr().err and not (tmp_path / "o2").exists()
    bare.write_text(SETUP + f"{START}\n{END}\n{START}\n{END}\n")
    assert main([*base, "--into", str(bare)]) == 1
    assert "a report holds one generated block" in capsys.readouterr().err
    args = ["sweep-report", "regen", "--from-metrics", str(table), "--into", str(doc)]
    assert main(args) == 1 and "give --sweep-file FILE too" in capsys.readouterr().err


def test_into_from_the_study_itself_gives_the_block_its_table_regenerates(study, tmp_path):
    tmp, runs, sweep_file, report = study
    doc = tmp_path / "study.md"
    doc.write_text(SETUP + f"{START}\n{END}\n")
    out = tmp_path / "from-runs"
    args = ["sweep-report", "regen", "--runs-dir", str(runs), "--out", str(out), "--sweep-file", str(sweep_file)]
    assert main([*args, "--into", str(doc)]) == 0
    found, expected = check_report(doc)
    assert found == expected and "](from-runs/masks-cluster.png)" in found


def committed_reports() -> list[Path]:
    return sorted(p for p in Path("reports").rglob("*.md") if START in p.read_text())


@pytest.mark.parametrize("report", committed_reports() or [None], ids=str)
def test_every_committed_reports_generated_block_is_what_its_committed_table_gives(report):
    if report is None:
        pytest.skip(
            f"no report under reports/ has a generated block yet (`{START}`): the studies are being run "
            "again; the mechanism is tested on temporary reports above"
        )
    found, expected = check_report(report)
    assert found == expected, (
        f"{report}: its generated block is not what its committed trial-metrics.csv gives now; write it again "
        "with the command on the block's first line"
    )


def test_a_report_without_a_sweep_file_on_record_is_not_silently_passed(tmp_path):
    doc = tmp_path / "r.md"
    doc.write_text(f"{START}\nhand-written numbers\n{END}\n")
    with pytest.raises(ValueError, match="does not start with the command that writes it"):
        check_report(doc)
