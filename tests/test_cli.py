import subprocess
import sys

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
    assert "synthetic | emoji | folder | shards" in out and "--set KEY=VALUE" in out


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
