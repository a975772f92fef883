"""Progress off a terminal: plain lines at a steady cadence, for logs, Slurm and CI."""

import io
import subprocess
import sys

from maskvlp.progress import Progress, format_duration, track


class FakeTty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_carry_count_postfix_rate_and_eta():
    out = io.StringIO()
    bar = Progress(10, "pretrain demo", "step", stream=out, every_s=0, initial=2)
    for i in range(3):
        bar.set_postfix(samples=(i + 3) * 64, loss=f"{2.5 - i:.3f}")
        bar.update(1)
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 4 and "\r" not in out.getvalue()
    assert lines[0].startswith("pretrain demo: 3/10 step (30%) | samples=192 loss=2.500 |")
    assert "step/s" in lines[0] and "ETA" in lines[0]
    assert lines[-1].startswith("pretrain demo: 5/10 step (50%)") and "done in" in lines[-1]


def test_cadence_limits_the_lines_and_disabled_prints_nothing():
    out = io.StringIO()
    bar = Progress(1000, "x", stream=out, every_s=3600)
    for _ in range(1000):
        bar.update(1)
    bar.close()
    assert len(out.getvalue().splitlines()) == 1  # only the closing line within the hour

    quiet = io.StringIO()
    list(track(range(5), 5, "y", enabled=False))
    bar = Progress(5, "y", stream=quiet, every_s=0, enabled=False)
    bar.update(5)
    bar.close()
    assert quiet.getvalue() == ""


def test_a_terminal_gets_a_bar_not_lines():
    tty = FakeTty()
    bar = Progress(4, "bar", stream=tty, every_s=0)
    bar.update(4)
    bar.close()
    assert "\r" in tty.getvalue() and "100%" in tty.getvalue()


def test_durations_read_naturally():
    assert [format_duration(s) for s in (4.4, 65, 3725)] == ["4s", "1m05s", "1h02m05s"]


def test_shard_command_prints_progress_into_a_redirected_log(tmp_path, tool_env):
    env = {**tool_env, "MASKVLP_PROGRESS_SECONDS": "0"}
    cmd = [sys.executable, "-m", "maskvlp.cli", "shard", "--set", f"data.out_dir={tmp_path}", "--set"]
    proc = subprocess.run(cmd + ["data.synthetic.num_samples=60"], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("shard synthetic: ")]
    assert len(lines) >= 60 and "/60 img" in lines[-1] and "done in" in lines[-1]
