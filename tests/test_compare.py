"""The sweep file's `compare:` section: refused when malformed, and `compare()` over hand-made run rows
(pure: rows in, numbers and sentences out)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from maskvlp.stats import mean_ci
from maskvlp.sweep.compare import compare, compare_spec, markdown, validate_compare
from maskvlp.sweep.space import SweepSpecError
from maskvlp.sweep.spec import parse, validate

SPACE = {
    "strategy": {"choices": {"none": {"masking.strategy": "none"}, "random": {"masking.strategy": "random"}}},
    "budget": {"choices": {"samples": {"train.compute_samples": 0}, "compute": {"train.compute_samples": 500}}},
    "train.seed": {"type": "categorical", "choices": [0, 1, 2]},
}


def spec_with(compare_section):
    raw = {
        "name": "cmp",
        "space": SPACE,
        "objectives": [{"metric": "zeroshot/val/top1"}],
        "sampler": {"name": "grid"},
        "pruner": {"name": "none"},
        "compare": compare_section,
    }
    return parse(raw)


GOOD = {
    "group": "strategy",
    "seeds": "train.seed",
    "budget": "budget",
    "claims": ["none > random"],
    "claim_metrics": ["zeroshot/val/top1"],
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"group": "model"}, "compare.group: 'model' is not a key of space"),
        ({"seeds": None}, "compare.seeds: required"),
        ({"budget": "strategy"}, "three different space keys"),
        ({"claims": ["none >> random"]}, "must read 'A > B'"),
        ({"claims": ["cluster > random"]}, "'cluster' is not a value of strategy"),
        ({"claims": ["none > none"]}, "with itself"),
        ({"claim_metrics": None}, "compare.claim_metrics: list the metrics"),
        ({"metrics": "zeroshot/val/top1"}, "must be a list of metric keys"),
        ({"colour": "red"}, "unknown key"),
    ],
)
def test_a_malformed_compare_section_is_refused_at_parse_time(change, message):
    with pytest.raises(SweepSpecError, match=message):
        spec_with({**GOOD, **change})


def test_compare_metrics_are_checked_against_what_evaluation_produces():
    spec = spec_with({**GOOD, "claim_metrics": ["zeroshot/vall/top1"]})
    cfg = validate(spec, "params.yaml")
    with pytest.raises(SweepSpecError, match="did you mean.*zeroshot/val/top1"):
        validate_compare(spec, cfg)
    assert validate_compare(spec_with(GOOD), cfg).claims == (("none", "random"),)


def _rows(values):
    """values: {(strategy, budget): [per-seed metric]} -> rows as trial_records returns them."""
    rows = []
    for (strategy, budget), xs in values.items():
        for seed, x in enumerate(xs):
            flops = 1e12 if strategy == "none" or budget == "compute" else 0.6e12
            rows.append(
                {
                    "group": strategy,
                    "budget": budget,
                    "seed": str(seed),
                    "run": f"r-{strategy}-{budget}-{seed}",
                    "values": {"zeroshot/val/top1": x, "train_flops": flops, "images_per_s": 100.0 + seed},
                }
            )
    return rows


def test_claims_hold_reverse_or_overlap_with_their_size_in_one_sentence():
    cs = compare_spec(spec_with(GOOD))
    rows = _rows(
        {
            ("none", "samples"): [0.50, 0.60, 0.70],
            ("random", "samples"): [0.45, 0.56, 0.64],  # steadily 0.05 lower: holds
            ("none", "compute"): [0.50, 0.60, 0.70],
            ("random", "compute"): [0.55, 0.64, 0.745],  # higher at equal compute: reversed
        }
    )
    result = compare(rows, cs)
    assert result["budgets"] == ["samples", "compute"] and result["seeds"] == ["0", "1", "2"]
    cell = result["table"]["samples"]["random"]["zeroshot/val/top1"]
    want = mean_ci([0.45, 0.56, 0.64])
    assert cell["mean"] == pytest.approx(want.mean) and cell["high"] == pytest.approx(want.high)
    by_budget = {c["budget"]: c for c in result["claims"]}
    assert by_budget["samples"]["verdict"] == "holds"
    assert by_budget["samples"]["difference"]["mean"] == pytest.approx(0.05)
    assert by_budget["samples"]["flops_ratio"] == pytest.approx(1 / 0.6)
    assert "none > random holds: none - random = +0.0500" in by_budget["samples"]["sentence"]
    assert "budget = samples, zeroshot/val/top1" in by_budget["samples"]["sentence"]
    assert by_budget["compute"]["verdict"] == "reversed" and "is reversed" in by_budget["compute"]["sentence"]
    md = markdown(result, cs)
    assert "### budget = samples" in md and "| random | 3 |" in md and "0.550 ± " in md
    # both survive Holm's correction over the 2 tests; the reversed one is named the way it came out
    assert f"compute, zeroshot/val/top1: none < random (the claim reversed, p = {by_budget['compute']['p']:.2g})" in md
    assert f"samples, zeroshot/val/top1: none > random (the claim, p = {by_budget['samples']['p']:.2g})" in md

    noisy = _rows({("none", "samples"): [0.5, 0.7, 0.6], ("random", "samples"): [0.6, 0.5, 0.65]})
    (claim,) = compare(noisy, cs)["claims"]
    assert (
        claim["verdict"] == "overlap"
        and "cannot be told apart" in claim["sentence"]
        and "contains 0" in claim["sentence"]
    )


def test_one_seed_or_a_missing_strategy_makes_no_claim():
    cs = compare_spec(spec_with(GOOD))
    (single,) = compare(_rows({("none", "samples"): [0.5], ("random", "samples"): [0.4]}), cs)["claims"]
    assert single["verdict"] == "no interval" and "no claim" in single["sentence"]
    (missing,) = compare(_rows({("none", "samples"): [0.5, 0.6]}), cs)["claims"]
    assert missing["verdict"] == "no data" and "nothing can be said" in missing["sentence"]


def test_the_evaluations_chance_level_is_a_row_of_the_table():
    from maskvlp.metrics import chance_key

    assert chance_key("zeroshot/val/top1") == "zeroshot/val/chance_top1"
    assert chance_key("retrieval/val/t2i_r1") == "retrieval/val/chance_r1"
    assert chance_key("retrieval/val/t2i_r5") is None and chance_key("images_per_s") is None
    cs = compare_spec(spec_with(GOOD))
    rows = _rows({("none", "samples"): [0.5, 0.6, 0.7], ("random", "samples"): [0.4, 0.5, 0.6]})
    for r in rows:
        r["values"]["zeroshot/val/chance_top1"] = 1 / 113
        r["values"]["zeroshot/val/majority_top1"] = 10 / 496  # the largest class: above 1/113
    result = compare(rows, cs)
    assert result["chance"] == {"zeroshot/val/top1": pytest.approx(1 / 113)}
    assert result["majority"] == {"zeroshot/val/top1": pytest.approx(10 / 496)}
    lines = markdown(result, cs).splitlines()
    chance_row = next(line for line in lines if line.startswith("| chance |"))
    assert "0.009" in chance_row
    majority_row = next(line for line in lines if line.startswith("| majority class |"))
    assert "0.020" in majority_row


def test_every_claim_states_the_difference_it_could_detect_and_the_seeds_a_target_needs():
    from maskvlp.stats import detectable_difference, seeds_needed

    cs = compare_spec(spec_with({**GOOD, "target_effect": 0.02}))
    noisy = _rows({("none", "samples"): [0.5, 0.7, 0.6, 0.55], ("random", "samples"): [0.6, 0.5, 0.65, 0.52]})
    (claim,) = compare(noisy, cs)["claims"]
    diffs = [-0.1, 0.2, -0.05, 0.03]
    sd = (sum((d - sum(diffs) / 4) ** 2 for d in diffs) / 3) ** 0.5
    assert claim["spread"] == pytest.approx(sd)
    assert claim["detectable"] == pytest.approx(detectable_difference(sd, 4))
    assert claim["target"] == pytest.approx(0.02 * (0.6 + 0.5 + 0.65 + 0.52) / 4)
    assert claim["seeds_for_target"] == seeds_needed(claim["target"], sd) and claim["seeds_for_target"] > 4
    text = claim["sentence"]
    assert "The smallest difference these 4 seeds detect (80% power" in text and f"{claim['detectable']:.4f}" in text
    assert f"which would need {claim['seeds_for_target']} seeds at this spread" in text
    md = markdown(compare(noisy, cs), cs)
    assert "| detectable (80% power) | target | seeds for target | p | after Holm | verdict |" in md
    row = f"| {claim['detectable']:.4f} | {claim['target']:.4f} | {claim['seeds_for_target']} | {claim['p']:.3f} |"
    assert row + " does not | overlap |" in md
    # a large, steady effect: within reach, and said so
    steady = _rows({("none", "samples"): [0.5, 0.6, 0.7], ("random", "samples"): [0.3, 0.41, 0.49]})
    wide = compare_spec(spec_with({**GOOD, "target_effect": 0.2}))  # 0.08: above the 0.033 these seeds detect
    (strong,) = compare(steady, wide)["claims"]
    assert strong["verdict"] == "holds" and "is within reach of this study" in strong["sentence"]


def test_the_claims_are_one_family_with_the_verdicts_chance_would_give_and_holms_survivors():
    """Two metrics at two budgets: 3 tests (one has no spread). A steady difference (p ~ 0.003) survives
    Holm's correction; one that holds only at the 5% level (p ~ 0.039 > 0.05 / 2) does not; noise
    (p ~ 0.53) does not. The report says how many verdicts chance alone would give, and which survive."""
    from scipy.stats import ttest_1samp

    cs = compare_spec(spec_with({**GOOD, "claim_metrics": ["zeroshot/val/top1", "images_per_s"]}))
    rows = _rows(
        {
            ("none", "samples"): [0.50, 0.60, 0.70],
            ("random", "samples"): [0.40, 0.51, 0.59],  # 0.10, 0.09, 0.11: steady
            ("none", "compute"): [0.50, 0.60, 0.70],
            ("random", "compute"): [0.47, 0.54, 0.66],  # 0.03, 0.06, 0.04: holds at 5%, p ~ 0.039
        }
    )
    for row in rows:  # images/s: the same on every seed at samples (no test); noise at compute
        if row["group"] == "random" and row["budget"] == "compute":
            row["values"]["images_per_s"] -= (2, -1, 1)[int(row["seed"])]
    result = compare(rows, cs)
    by = {(c["budget"], c["metric"]): c for c in result["claims"]}
    steady, weak = by["samples", "zeroshot/val/top1"], by["compute", "zeroshot/val/top1"]
    noise, flat = by["compute", "images_per_s"], by["samples", "images_per_s"]
    assert steady["p"] == pytest.approx(ttest_1samp([0.10, 0.09, 0.11], 0).pvalue)
    assert weak["p"] == pytest.approx(ttest_1samp([0.03, 0.06, 0.04], 0).pvalue)
    assert noise["p"] == pytest.approx(ttest_1samp([2, -1, 1], 0).pvalue) and noise["verdict"] == "overlap"
    assert steady["verdict"] == weak["verdict"] == "holds" and 0.025 < weak["p"] < 0.05 and steady["p"] < 0.05 / 3
    assert steady["holm"] and not weak["holm"] and not noise["holm"]
    assert flat["verdict"] == "no spread" and "p" not in flat and "holm" not in flat
    assert result["family"] == {"tests": 3, "level": 0.95, "by_chance": pytest.approx(0.15), "holds": 2, "reversed": 0}
    md = markdown(result, cs)
    assert (
        "The 3 tested rows are one family of paired t-tests at the 5% level: if no arm differed from another, "
        'about 0.15 of them would read "holds" or "reversed" by chance alone; here 2 hold and 0 are reversed.'
    ) in md
    assert (
        "Under Holm's correction over the 3 tests (a 5% chance of any false verdict in the family), 1 rejects "
        f'"no difference": samples, zeroshot/val/top1: none > random (the claim, p = {steady["p"]:.2g}).'
    ) in md
    assert f"| {weak['p']:.3f} | does not | holds |" in md and f"| {steady['p']:.3f} | rejects 0 | holds |" in md
    # without the steady claim nothing survives, and the report says so
    alone = compare([r for r in rows if r["budget"] == "compute"], cs)
    assert not any(c.get("holm") for c in alone["claims"])
    assert 'none rejects "no difference"' in markdown(alone, cs)


def test_a_difference_the_same_on_every_seed_is_not_a_claim_that_holds():
    cs = compare_spec(spec_with(GOOD))
    rows = _rows({("none", "samples"): [0.5, 0.6, 0.7], ("random", "samples"): [0.48, 0.58, 0.68]})
    for row in rows:  # exactly 0.02 apart on every seed (binary fractions: no rounding)
        if row["group"] == "random":
            row["values"]["zeroshot/val/top1"] = {"0": 0.5, "1": 0.625, "2": 0.75}[row["seed"]] - 0.03125
        else:
            row["values"]["zeroshot/val/top1"] = {"0": 0.5, "1": 0.625, "2": 0.75}[row["seed"]]
    (claim,) = compare(rows, cs)["claims"]
    assert claim["verdict"] == "no spread", claim
    assert "zero spread" in claim["sentence"] and "holds" not in claim["sentence"]


@pytest.mark.parametrize("bad", [0, 1.5, -0.1, "6%", True])
def test_a_target_effect_outside_0_1_is_refused(bad):
    with pytest.raises(SweepSpecError, match="compare.target_effect: must be a fraction"):
        spec_with({**GOOD, "target_effect": bad})


def test_composition_columns_have_their_text_only_floor_as_a_row():
    cs = compare_spec(spec_with({**GOOD, "metrics": ["zeroshot/val/top1", "composition/emoji/relation"]}))
    rows = _rows({("none", "samples"): [0.5, 0.6], ("random", "samples"): [0.4, 0.5]})
    for i, r in enumerate(rows):
        r["values"] |= {"composition/emoji/relation": 0.8, "composition/emoji/relation_text_floor": 0.7 + 0.1 * (i % 2)}
    result = compare(rows, cs)
    assert result["text_floor"] == {"composition/emoji/relation": pytest.approx(0.75)}
    row = next(line for line in markdown(result, cs).splitlines() if line.startswith("| text-only floor"))
    assert row.startswith("| text-only floor (mean over trials) | - | - | 0.750 |")  # seeds, zero-shot, composition


def test_every_table_shows_time_beside_flops_and_the_achieved_mask_ratio_beside_coverage():
    from maskvlp.sweep.compare import RECORD_COLUMNS

    assert RECORD_COLUMNS["wall_s"] == ("wall_s",) and RECORD_COLUMNS["mask_ratio"] == ("masking", "mean_mask_ratio")
    cs = compare_spec(spec_with(GOOD))
    rows = _rows({("none", "samples"): [0.5, 0.6], ("random", "samples"): [0.4, 0.5]})
    for r in rows:
        r["values"] |= {"wall_s": 85.6 if r["group"] == "none" else 110.6, "samples_seen": 12032.0}
        r["values"] |= {"mask_ratio": 0.0 if r["group"] == "none" else 0.5}
        if r["group"] == "random":
            r["values"]["cluster_coverage"] = 0.3
    result = compare(rows, cs)
    cols = result["columns"]
    assert cols.index("wall_s") == cols.index("train_flops") + 1
    assert cols.index("cluster_coverage") == cols.index("mask_ratio") + 1
    lines = markdown(result, cs).splitlines()
    header = next(line for line in lines if line.startswith("| strategy |"))
    assert header == (
        "| strategy | seeds | zeroshot/val/top1 | images/s | samples seen | TFLOPs | train time (s) | mask ratio | "
        "coverage |"
    )
    random_row = next(line for line in lines if line.startswith("| random |"))  # TFLOPs, s, ratio, coverage
    assert random_row.endswith("| 0.60 ± 0.00 | 111 ± 0 | 0.500 ± 0.000 | 0.300 ± 0.000 |")
    none_row = next(line for line in lines if line.startswith("| none |"))
    assert none_row.endswith("| 1.00 ± 0.00 | 86 ± 0 | 0.000 ± 0.000 | - |")  # unmasked: ratio 0, no clusters
    assert "TFLOPs: training FLOPs" in lines[0] and "train time (s): measured in each run" in lines[0]


def test_two_budgets_give_each_masked_group_a_counted_sentence_not_an_assertion():
    from maskvlp.sweep.comparetext import budget_sentence

    cs = compare_spec(
        spec_with({**GOOD, "metrics": ["zeroshot/val/top1", "linear_probe/val/top1", "retrieval/val/t2i_r1"]})
    )
    rows = _rows(
        {
            ("none", "samples"): [0.50, 0.60],
            ("random", "samples"): [0.40, 0.50],
            ("none", "compute"): [0.50, 0.60],
            ("random", "compute"): [0.45, 0.55],
        }
    )
    probe = {"samples": [0.064, 0.064], "compute": [0.059, 0.059]}  # lower at compute
    t2i = {"samples": [0.0105, 0.0105], "compute": [0.0105, 0.0105]}  # the same
    for r in rows:
        r["values"]["mask_ratio"] = 0.0 if r["group"] == "none" else 0.5
        r["values"]["linear_probe/val/top1"] = probe[r["budget"]][int(r["seed"])]
        r["values"]["retrieval/val/t2i_r1"] = t2i[r["budget"]][int(r["seed"])]
    result = compare(rows, cs)
    (change,) = result["budget_changes"]  # `none` is unmasked: the same samples at both budgets
    assert change["group"] == "random" and (change["from"], change["to"]) == ("samples", "compute")
    assert [m["metric"] for m in change["higher"]] == ["zeroshot/val/top1"]
    assert change["lower"] == [
        {"metric": "linear_probe/val/top1", "from": pytest.approx(0.064), "to": pytest.approx(0.059)}
    ]
    text = budget_sentence(change)
    assert text == (
        "random: 1 of 3 metrics higher at compute than at samples; lower: linear_probe/val/top1 (0.064 -> 0.059); "
        "equal: retrieval/val/t2i_r1 (0.011)."
    )
    md = markdown(result, cs)
    assert "### From one budget to the next" in md and f"- {text}" in md and "- none:" not in md
    # means that differ only past the third decimal are shown with the decimals that tell them apart
    close = {**change, "higher": [], "equal": [], "lower": [{"metric": "m", "from": 0.06412, "to": 0.06408}]}
    assert budget_sentence(close).endswith("lower: m (0.06412 -> 0.06408).")
    # one budget: no such sentence
    assert compare([r for r in rows if r["budget"] == "samples"], cs)["budget_changes"] == []


_KEYS = ("zeroshot/val/top1", "retrieval/val/t2i_r1", "train_flops", "mask_ratio", "zeroshot/val/chance_top1")


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["none", "random"]),
            st.sampled_from(["samples", "compute"]),
            st.integers(0, 5),
            st.dictionaries(st.sampled_from(_KEYS), st.floats(allow_nan=False, width=64), max_size=len(_KEYS)),
            st.lists(st.sampled_from(_KEYS[:2]), unique=True),
        ),
        max_size=8,
    ),
    st.dictionaries(st.sampled_from(["pruned", "not finished"]), st.integers(1, 3)),
)
def test_trial_metrics_csv_reads_back_the_rows_it_was_written_from(tmp_path_factory, trials, skipped):
    """Every float to the last bit (infinities too), missing values missing, row order kept, and the
    trials left out counted by reason: the rows compare() gets are the ones it got from the study."""
    from maskvlp.sweep.trialmetrics import read_trial_metrics, write_trial_metrics

    rows = [
        {
            "group": g,
            "budget": b,
            "seed": str(s),
            "run": f"runs/x/trial-{i:04d}",
            "values": v,
            "reevaluated": sorted(re),
        }
        for i, (g, b, s, v, re) in enumerate(trials)
    ]
    path = write_trial_metrics(tmp_path_factory.mktemp("csv") / "trial-metrics.csv", rows, skipped)
    back, left_out = read_trial_metrics(path, compare_spec(spec_with(GOOD)))
    assert back == rows and left_out == skipped
    assert all(repr(r["values"][k]) == repr(q["values"][k]) for r, q in zip(rows, back) for k in r["values"])  # -0.0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("strategy,budget,seed,run\n", "not a trial-metrics table"),
        ("group,budget,seed,run,left_out,reevaluated,zeroshot/val/top1\nnone,all,0,r,,,0.5,7\n", "line 2: 8 cells"),
        ("group,budget,seed,run,left_out,reevaluated,zeroshot/val/top1\nnone,all,0,r,,,high\n", "is not a number"),
        (
            "group,budget,seed,run,left_out,reevaluated,zeroshot/val/top1\ncluster,all,0,r,,,0.5\n",
            "the study's own sweep",
        ),
    ],
)
def test_a_table_that_is_not_a_studys_trial_metrics_is_refused_saying_why(tmp_path, text, message):
    from maskvlp.sweep.trialmetrics import read_trial_metrics

    (tmp_path / "t.csv").write_text(text)
    with pytest.raises(ValueError, match=message):
        read_trial_metrics(tmp_path / "t.csv", compare_spec(spec_with(GOOD)))


def test_measured_speed_and_time_against_the_unmasked_arm_paired_by_seed():
    cs = compare_spec(spec_with(GOOD))
    rows = _rows({("none", "compute"): [0.5, 0.6], ("random", "compute"): [0.4, 0.5]})
    speed = {("none", "0"): 140.0, ("none", "1"): 100.0, ("random", "0"): 196.0, ("random", "1"): 130.0}
    wall = {("none", "0"): 85.6, ("none", "1"): 90.0, ("random", "0"): 110.6, ("random", "1"): 117.0}
    for r in rows:
        key = (r["group"], r["seed"])
        r["values"] |= {"images_per_s": speed[key], "wall_s": wall[key]}
        r["values"]["mask_ratio"] = 0.0 if r["group"] == "none" else 0.5
    result = compare(rows, cs)
    r = result["speedups"]["compute"]["random"]
    assert r["against"] == "none"
    # paired by seed (1.40 and 1.30), not the ratio of the means (163 / 120 = 1.358)
    assert r["speedup"]["mean"] == pytest.approx(1.35) and r["speedup"]["n"] == 2
    assert r["time_ratio"]["mean"] == pytest.approx((110.6 / 85.6 + 117.0 / 90.0) / 2)
    text = markdown(result, cs)
    assert "- budget = compute, random against none: images/s x 1.35 [" in text
    assert "time x 1.30 [" in text and "`train.compute_speedup`" in text
    for row in rows:  # no unmasked arm: nothing to measure against, no section
        row["values"]["mask_ratio"] = 0.5
    assert compare(rows, cs)["speedups"] == {} and "Measured speed" not in markdown(compare(rows, cs), cs)


def test_arms_whose_flops_miss_the_unmasked_arms_are_named_at_each_budget():
    # the paper's arm planned its compute budget at a 50% final ratio it could not reach on clip art
    # (it masked 34%) and spent 1.16x the unmasked arm's FLOPs: the report must not call that equal compute
    cs = compare_spec(spec_with(GOOD))
    rows = _rows({("none", "compute"): [0.5, 0.6], ("random", "compute"): [0.4, 0.5]})
    for r in rows:
        r["values"] |= {"train_flops": 30.1e12 if r["group"] == "none" else 35.0e12}
        r["values"]["mask_ratio"] = 0.0 if r["group"] == "none" else 0.34
    result = compare(rows, cs)
    assert result["speedups"]["compute"]["random"]["flops_ratio"]["mean"] == pytest.approx(35.0 / 30.1)
    text = markdown(result, cs)
    assert "TFLOPs x 1.16 [" in text
    assert (
        "- budget = compute: training FLOPs within 2% of none's: no arm; not: random (1.16x) "
        "(compared with none at this budget, not at equal compute)." in text
    )
    for r in rows:
        r["values"]["train_flops"] = 30.1e12 * (1.0 if r["group"] == "none" else 1.019)
    assert "- budget = compute: training FLOPs within 2% of none's: random." in markdown(compare(rows, cs), cs)


# --------------------------------------------------------------- a difference along the budget axis
WIDTHS = {
    "strategy": SPACE["strategy"],
    "model": {"choices": ["w64", "w128", "w256"], "set": ["model.vision", "model.text"]},
    "train.seed": {"type": "categorical", "choices": [0, 1, 2, 3]},
}


def trend_spec(**section):
    raw = {
        "name": "inverse",
        "space": WIDTHS,
        "objectives": [{"metric": "zeroshot/val/top1"}],
        "sampler": {"name": "grid"},
        "pruner": {"name": "none"},
        "compare": {**GOOD, "budget": "model", "trend": "falls", **section},
    }
    return compare_spec(parse(raw))


def _width_rows(gaps: dict[str, list[float]]) -> list[dict]:
    """none scores 0.5 + seed/10 at every width; random is lower by gaps[width][seed]."""
    rows = []
    for width, gap in gaps.items():
        for seed, g in enumerate(gap):
            for strategy, x in (("none", 0.5 + seed / 10), ("random", 0.5 + seed / 10 - g)):
                values = {"zeroshot/val/top1": x, "train_flops": 1e12}
                rows.append({"group": strategy, "budget": width, "seed": str(seed), "run": "r", "values": values})
    return rows


def test_a_trend_falls_rises_or_cannot_be_told_along_the_budget_values_in_file_order(tmp_path):
    cs = trend_spec()
    assert cs.budget_values == ("w64", "w128", "w256") and cs.trend == "falls"
    # the loss from masking shrinks as the width grows (CLIPA's inverse scaling), seeds in rows' order shuffled
    rows = _width_rows({"w256": [0.01, 0.02, 0.015, 0.01], "w64": [0.10, 0.12, 0.09, 0.11], "w128": [0.05] * 4})
    (t,) = compare(rows, cs)["trends"]
    assert (t["first"], t["last"]) == ("w64", "w256") and list(t["per_budget"]) == ["w64", "w128", "w256"]
    assert t["change"]["mean"] == pytest.approx(0.01375 - 0.105) and t["direction"] == "falls"
    md = markdown(compare(rows, cs), cs)
    assert "### How each difference changes along model" in md
    assert "the difference falls, as the study expects" in md and "w64: +0.1050; w128: +0.0500" in md
    # every section follows the sweep file's order, not the rows' (a string sort would put w128 first)
    assert compare(rows, cs)["budgets"] == ["w64", "w128", "w256"]
    assert md.index("### model = w64") < md.index("### model = w128") < md.index("### model = w256")
    # one generated sentence sums the rows up: how many changes are told apart, which way, at what power
    change = t["change"]
    assert (
        "Of the 1 trend rows, 1 can be told apart from no change at the 5% level (1 as the study expects, "
        f"'falls', and 0 against it): zeroshot/val/top1, none - random falls by {change['mean']:+.4f} "
        f"[{change['low']:+.4f}, {change['high']:+.4f}]. Each row is its own paired t-test, not corrected for the 1"
    ) in md
    grows = _width_rows({"w64": [0.01, 0.02, 0.015, 0.01], "w256": [0.10, 0.12, 0.09, 0.11]})
    (g,) = compare(grows, cs)["trends"]
    assert g["direction"] == "rises"
    assert "the difference rises, against the study's expectation (falls)" in markdown(compare(grows, cs), cs)
    noisy = _width_rows({"w64": [0.05, 0.10, 0.02, 0.08], "w256": [0.09, 0.01, 0.07, 0.04]})
    (n,) = compare(noisy, cs)["trends"]
    assert n["direction"] == "overlap" and n["detectable"] > 0
    noisy_md = markdown(compare(noisy, cs), cs)
    assert "no change can be told apart" in noisy_md
    assert (
        "Of the 1 trend rows, 0 can be told apart from no change at the 5% level. 1 cannot be told apart; the "
        f"smallest changes their seeds detect with 80% power are {n['detectable']:.4f}."
    ) in noisy_md
    assert "about 0.05 of them would be told apart by chance alone" in noisy_md

    from maskvlp.sweep.comparetrend import trend_figure

    result = compare(rows, cs)
    assert trend_figure(result, cs, tmp_path / "trend.png").stat().st_size > 1000


@pytest.mark.parametrize(
    ("section", "message"),
    [({"trend": "shrinks"}, "compare.trend: must be one of rises, falls"), ({"claims": []}, "claims set")],
)
def test_a_trend_needs_a_known_direction_a_budget_and_claims(section, message):
    with pytest.raises(SweepSpecError, match=message):
        trend_spec(**section)
