import subprocess
import sys

import pytest

from maskvlp.cli import main


def test_help_lists_subcommands(capsys):
    try:
        main(["--help"])
    except SystemExit as exc:
        assert exc.code == 0
    out = capsys.readouterr().out
    assert "shard" in out and "config" in out and "--set" not in out.split("COMMAND")[0]


def test_shard_help_explains_sources(capsys):
    try:
        main(["shard", "--help"])
    except SystemExit:
        pass
    out = capsys.readouterr().out
    text = " ".join(out.split())  # argparse wraps the description at the terminal width
    for source in ("synthetic", "emoji", "openclipart", "mix", "folder", "shards"):
        assert source in text, f"`maskvlp shard --help` does not name the source {source!r}"
    assert "--set KEY=VALUE" in out


def test_shard_command_writes_shards_and_reports(tmp_path, capsys):
    code = main(
        [
            "shard",
            "--params",
            "params.yaml",
            "--quiet",
            "--set",
            f"data.out_dir={tmp_path}",
            "--set",
            "data.synthetic.num_samples=30",
            "--set",
            "data.num_workers=1",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "train:" in out and "skipped 0" in out
    assert (tmp_path / "manifest.json").is_file()


def test_invalid_override_exits_2_naming_the_key(tmp_path, capsys):
    assert main(["shard", "--set", "masking.ratio=1.2", "--set", f"data.out_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "masking.ratio" in err and "[0, 1)" in err
    assert not list(tmp_path.iterdir())


def test_console_script_is_installed():
    proc = subprocess.run(
        [sys.executable, "-m", "maskvlp.cli", "config", "--set", "seed=5"], capture_output=True, text=True
    )
    assert proc.returncode == 0 and "seed: 5" in proc.stdout


def test_masks_command_draws_a_png(tmp_path, capsys):
    from PIL import Image

    shards = tmp_path / "shards"
    assert main(["shard", "--quiet", "--set", f"data.out_dir={shards}", "--set", "data.synthetic.num_samples=40"]) == 0
    out = tmp_path / "masks.png"
    assert main(["masks", "--images", str(shards), "--out", str(out), "--count", "3"]) == 0
    img = Image.open(out)
    assert img.format == "PNG" and img.width > 500 and img.height > 300


def test_masks_command_with_calibration_reports_the_threshold(tmp_path, capsys):
    shards = tmp_path / "shards"
    main(["shard", "--quiet", "--set", f"data.out_dir={shards}", "--set", "data.synthetic.num_samples=40"])
    code = main(
        [
            "masks",
            "--images",
            str(shards),
            "--out",
            str(tmp_path / "m.png"),
            "--count",
            "4",
            "--set",
            "masking.calibrate_coverage=0.3",
        ]
    )
    assert code == 0
    assert "calibrated threshold" in capsys.readouterr().out


def test_masks_command_with_a_bad_path_is_a_clear_error(tmp_path, capsys):
    assert main(["masks", "--images", str(tmp_path / "nothing"), "--out", str(tmp_path / "m.png")]) == 1
    assert "neither an image folder" in capsys.readouterr().err


def test_masks_command_skips_and_counts_bad_images_in_a_folder(tmp_path, capsys, monkeypatch):
    from PIL import Image

    images = tmp_path / "imgs"
    images.mkdir()
    for i in range(3):
        Image.new("RGB", (40 + i, 32), (200, 20 * i, 30)).save(images / f"good{i}.png")
    Image.new("L", (4000, 2500)).save(images / "bomb.png")  # a decompression bomb once the limit is lowered
    (images / "broken.jpg").write_bytes(b"not a jpeg")
    Image.new("RGB", (4, 4)).save(images / "tiny.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2_000_000)  # 10M > 2 x 2M pixels: Pillow refuses it
    out = tmp_path / "m.png"
    assert main(["masks", "--images", str(images), "--out", str(out), "--count", "6"]) == 0
    printed = capsys.readouterr().out
    assert "skipped 3 unusable image(s)" in printed
    assert "image_too_large=1" in printed and "unreadable_image=1" in printed and "image_too_small=1" in printed
    assert Image.open(out).format == "PNG"


def test_the_cli_module_does_not_import_torch_or_optuna():
    """`maskvlp --help` and the sweep commands' help answered in 2-3.5 s: cli.py imported torch at the top."""
    code = "import maskvlp.cli, sys; print(sorted(m for m in ('torch', 'optuna', 'numpy') if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"


def test_version_prints_the_installed_version(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"maskvlp {version('maskvlp')}"


@pytest.mark.parametrize(
    "command",
    [[], ["shard"], ["pretrain"], ["evaluate"], ["masks"], ["sweep"], ["sweep-report"], ["scaling-fit"]],
)
def test_help_is_wrapped_to_the_terminal(command, capsys, monkeypatch):
    """`maskvlp sweep --help` printed its description as one ~400-character line."""
    monkeypatch.setenv("COLUMNS", "100")
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    out = capsys.readouterr().out
    long = [line for line in out.splitlines() if len(line) > 100]
    assert not long, f"`maskvlp {' '.join(command)} --help` has lines over 100 characters: {long}"
    if command == ["sweep"]:  # the example lines keep their line breaks
        assert "\nthen: maskvlp sweep-status masking" in out


def _no_submission(monkeypatch):
    import maskvlp.launch

    def submit(*args, **kwargs):
        raise AssertionError("a job was submitted")

    monkeypatch.setattr(maskvlp.launch, "submit", submit)


@pytest.mark.parametrize(
    "override, key",
    [
        ('launcher.job_name="debug\\n#SBATCH --wrap=touch /tmp/pwned"', "launcher.job_name"),
        ('launcher.partition="x\\ntouch /tmp/pwned"', "launcher.partition"),
        ('launcher.additional_parameters={comment: "x\\ntouch /tmp/pwned"}', "launcher.additional_parameters.comment"),
        ('train.run_name=".."', "train.run_name"),
    ],
)
def test_pretrain_refuses_shell_lines_in_params_before_submitting(override, key, tmp_path, capsys, monkeypatch):
    """A newline in launcher.job_name ended its #SBATCH line: the batch script ran an injected `touch`."""
    _no_submission(monkeypatch)
    code = main(
        ["pretrain", "--set", "launcher.executor=slurm", "--set", f"train.runs_dir={tmp_path}", "--set", override]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert key in err and "invalid parameters" in err
    assert not list(tmp_path.iterdir())


def test_sweep_refuses_a_shell_line_in_its_base_before_anything(tmp_path, capsys, monkeypatch):
    _no_submission(monkeypatch)
    sweep = tmp_path / "s.yaml"
    sweep.write_text(
        "name: s\n"
        'base: {launcher.job_name: "x\\ntouch /tmp/pwned", launcher.executor: slurm}\n'
        "space: {masking.ratio: {type: float, low: 0.3, high: 0.6}}\n"
        "objectives: [{metric: zeroshot/objects/top1, direction: maximize}]\n"
        "n_trials: 2\n"
    )
    code = main(["sweep", str(sweep), "--set", f"train.runs_dir={tmp_path / 'runs'}"])
    assert code == 2
    err = capsys.readouterr().err
    assert "launcher.job_name: control character '\\n'" in err
    assert not (tmp_path / "runs").exists()


@pytest.fixture(scope="module")
def sweep_shards(tmp_path_factory):
    from .sweeping import tiny_shards

    return tiny_shards(tmp_path_factory)


@pytest.mark.parametrize(
    "args, refusal",
    [
        (["--detach"], "add --set launcher.executor=slurm"),
        (["--storage", "sqlite:///{tmp}/s.db"], "SQLite cannot take parallel workers"),
    ],
)
def test_sweep_refuses_before_it_prints_its_plan(args, refusal, sweep_shards, tmp_path, capsys):
    """`maskvlp sweep` printed its plan (trials, storage, folder), then refused to run it."""
    from .sweeping import tiny_base, write_sweep

    sweep = write_sweep(tmp_path / "s.yaml", tiny_base(sweep_shards, tmp_path / "runs"), parallel=2)
    code = main(["sweep", str(sweep), *(a.format(tmp=tmp_path) for a in args)])
    out, err = capsys.readouterr()
    assert code == 2 and refusal in err
    assert out == ""
    assert not (tmp_path / "runs").exists() and not (tmp_path / "s.db").exists()


def test_sweep_without_shards_says_to_shard_once(tmp_path, capsys):
    from .sweeping import tiny_base, write_sweep

    sweep = write_sweep(tmp_path / "s.yaml", tiny_base(tmp_path / "no-shards", tmp_path / "runs"))
    assert main(["sweep", str(sweep)]) == 2
    err = capsys.readouterr().err
    assert err.count("maskvlp shard") == 1, err
