"""The evaluate stage on a really trained tiny model: metrics, HParams session read back, report."""

import json
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from maskvlp.cli import main
from maskvlp.data.shards import shard
from maskvlp.evaluate import EvalError, load_run
from maskvlp.params import load_config
from maskvlp.train import pretrain

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, list[str]]:
    tmp = tmp_path_factory.mktemp("eval")
    overrides = [
        f"data.out_dir={tmp / 'shards'}",
        "data.synthetic.num_samples=1200",
        "data.num_workers=1",
        "data.loader_workers=0",
        f"train.runs_dir={tmp / 'runs'}",
        "train.samples=4800",
        "train.batch_size=32",
        "train.warmup_samples=480",
        "eval.objects_per_class=5",
        "eval.linear_probe_samples=400",
        f"eval.metrics_file={tmp / 'metrics' / 'eval.json'}",
    ]
    cfg = load_config(None, overrides)
    shard(cfg, progress=False)
    pretrain(cfg, progress=False)
    return tmp, overrides


def _args(overrides):
    return [a for kv in overrides for a in ("--set", kv)]


def test_evaluate_writes_metrics_far_above_chance(trained, capsys):
    tmp, overrides = trained
    assert main(["evaluate", "--quiet", *_args(overrides)]) == 0
    metrics = json.loads((tmp / "metrics" / "eval.json").read_text())
    for key in (
        "zeroshot/val/top1",
        "zeroshot/val/top5",
        "zeroshot/val/mean_per_class_recall",
        "zeroshot/objects/top1",
        "retrieval/val/i2t_r1",
        "retrieval/val/t2i_r10",
        "linear_probe/val/top1",
        "linear_probe/objects/top1",
        "linear_probe/objects/C",
        "linear_probe/objects/converged",
        "linear_probe/objects/unconverged_fits",
        "composition/val/attribute",
        "composition/val/relation",
        "composition/val/object",
    ):
        assert key in metrics, key
    assert metrics["retrieval/val/i2t_r5"] > 10 * 5 * metrics["retrieval/val/chance_r1"]
    assert metrics["zeroshot/objects/top5"] > 2 * 5 * metrics["zeroshot/objects/chance_top1"]
    # the majority-class baseline: the objects set is balanced (1/32); val's single-object scenes are not
    assert metrics["zeroshot/objects/majority_top1"] == pytest.approx(metrics["zeroshot/objects/chance_top1"], abs=1e-6)
    assert metrics["zeroshot/val/majority_top1"] > metrics["zeroshot/val/chance_top1"]
    # val zero-shot scores the single-object scenes only: a label the image determines
    assert 0 < metrics["zeroshot/val/samples"] < 0.6 * metrics["retrieval/val/samples"]
    per_class = json.loads((tmp / "metrics" / "eval_per_class.json").read_text())
    assert {"dataset", "class", "recall"} <= set(per_class[0])
    assert json.loads((tmp / "metrics" / "eval_retrieval.json").read_text())[0]["k"] == 1


def test_hparams_session_lives_in_the_run_folder_and_is_replaced_on_rerun(trained):
    tmp, overrides = trained
    main(["evaluate", "--quiet", *_args(overrides)])
    main(["evaluate", "--quiet", *_args(overrides)])
    eval_dir = tmp / "runs" / "default" / "eval"
    events = list(eval_dir.glob("events.out.tfevents.*"))
    assert len(events) == 1  # one session per run, not a new timestamped folder per evaluation
    assert not [p for p in eval_dir.iterdir() if p.is_dir()]
    acc = EventAccumulator(str(eval_dir))
    acc.Reload()
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(acc.PluginTagToContent("hparams"))
    assert "zeroshot/objects/top1" in acc.Tags()["scalars"]
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    info = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    assert info.hparams["masking.strategy"].string_value == "cluster"
    assert info.hparams["masking.ratio"].number_value == pytest.approx(0.5)


def test_an_extra_evaluation_leaves_the_stage_outputs_untouched(trained, capsys):
    """`--dataset` writes to eval-extra/<set>/, never into eval/ (the `evaluate` stage's DVC output) nor
    eval.metrics_file: an extra evaluation must not make `dvc repro` re-run the stage."""
    tmp, overrides = trained
    assert main(["evaluate", "--quiet", *_args(overrides)]) == 0
    run = tmp / "runs" / "default"

    def outputs() -> dict[str, tuple[bytes, int]]:
        files = [*(run / "eval").rglob("*"), *(tmp / "metrics").rglob("*")]
        return {str(p): (p.read_bytes(), p.stat().st_mtime_ns) for p in files if p.is_file()}

    before = outputs()
    capsys.readouterr()
    assert main(["evaluate", "--quiet", "--dataset", "objects", *_args(overrides)]) == 0
    assert outputs() == before
    extra = run / "eval-extra" / "objects" / "metrics.json"
    assert "zeroshot/objects/top1" in json.loads(extra.read_text())
    assert f"wrote {extra}" in capsys.readouterr().out


def test_report_prints_a_table_and_draws_a_chart(trained, capsys, tmp_path, monkeypatch):
    tmp, overrides = trained
    main(["evaluate", "--quiet", *_args(overrides)])
    capsys.readouterr()
    out = tmp_path / "report.png"
    assert main(["report", str(tmp / "runs" / "default"), str(tmp / "nothing"), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "default" in text and "cluster a=0.03 t=0.5 r=0.5" in text and "zs/obj/top1" in text
    from PIL import Image

    assert Image.open(out).format == "PNG"
    # every header sits right-aligned over its column; a chance row gives 1/classes, 1/N and 0.5
    lines = text.splitlines()
    header, rows = lines[0], [line for line in lines[2:] if line.strip() and not line.startswith("wrote")]
    assert all(len(row) == len(header) for row in rows), text
    chance = next(line for line in rows if line.startswith("chance"))
    assert f"{1 / 32:.3f}" in chance and "0.500" in chance

    # without --out: under reports/, not the current directory
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    assert main(["report", str(tmp / "runs" / "default")]) == 0
    assert (cwd / "reports" / "report.png").is_file() and not (cwd / "report.png").exists()


def test_report_without_evaluated_runs_says_what_to_do(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 1
    assert "maskvlp evaluate" in capsys.readouterr().err


def test_evaluating_an_unfinished_run_is_a_clear_error(tmp_path):
    with pytest.raises(EvalError, match="maskvlp pretrain"):
        load_run(tmp_path)


def test_fashion_mnist_zero_shot_and_linear_probe_from_idx_files(trained, tmp_path):
    """The registered `fashion-mnist` set over a small copy of the package's IDX layout written here:
    zero-shot with its class names and templates, and the probe on its train split."""
    from .test_idx import _fake_fashion

    tmp, overrides = trained
    fake = _fake_fashion(tmp_path / "fm", n=40)
    extra = [f"eval.fashion_mnist_dir={fake}", "eval.fashion_mnist_samples=30", "eval.linear_probe_samples=40"]
    assert main(["evaluate", "--quiet", "--dataset", "fashion-mnist", *_args(overrides + extra)]) == 0
    run = tmp / "runs" / "default"
    metrics = json.loads((run / "eval-extra" / "fashion-mnist" / "metrics.json").read_text())
    metrics = metrics.get("metrics", metrics)
    assert metrics["zeroshot/fashion-mnist/samples"] == 30 and metrics["zeroshot/fashion-mnist/chance_top1"] == 0.1
    assert 0 <= metrics["zeroshot/fashion-mnist/top1"] <= 1 and "linear_probe/fashion-mnist/top1" in metrics
    assert not any(k.startswith("retrieval/fashion-mnist") for k in metrics)  # labels only, no captions to retrieve
    missing = [*overrides, f"eval.fashion_mnist_dir={tmp_path / 'absent'}"]
    assert main(["evaluate", "--quiet", "--dataset", "fashion-mnist", *_args(missing)]) != 0


def test_the_text_only_floor_is_the_choice_made_against_a_blank_image(tmp_path):
    """Images whose features are the blank image's score exactly their floor; a floor is in [0, 1]."""
    import torch

    from maskvlp.data.tokenizer import Tokenizer
    from maskvlp.evaltasks import Encoded, blank_features, composition
    from maskvlp.model import CLIP

    cfg = load_config(None, ["model.image_size=32", "model.patch_size=8", "model.embed_dim=32"])
    torch.manual_seed(0)
    model = CLIP.from_config(cfg.model).eval()
    blank = blank_features(model, 32, cfg, torch.device("cpu"))
    captions = ["a red circle left of a blue square", "a cat above a dog", "a sun left of a moon"]
    negatives = ["a blue square left of a red circle", "a dog above a cat", "a moon left of a sun"]
    metas = [{"negatives": {"relation": n}} for n in negatives]
    enc = Encoded(blank.repeat(3, 1), captions, metas)
    scores = composition(model, enc, Tokenizer(cfg.model.context_length), torch.device("cpu"), blank)
    assert scores["relation"] == scores["relation_text_floor"]
    assert 0.0 <= scores["relation_text_floor"] <= 1.0
    assert "attribute" not in scores  # no negatives of that kind
