"""Named data presets: which images a run trains on and which sets it is evaluated on, under one key.

`data.preset: synthetic | real` fills the keys params.yaml (or `--set`) leaves at `null`; a key given
a value beside the preset wins, as with `train.recipe` (recipes.py). The resolved values are what a
run records, so a run folder reproduces without this table.

- `synthetic` (the default of `dvc repro`): the embedded generated scenes; evaluated on their val
  split (retrieval, zero-shot on single-object scenes, probe, composition) and on `objects`.
- `real`: real drawings and glyphs from Debian packages (README, "Real data"). Trains on OpenClipart's
  train split (`openclipart-svg`) mixed with every emoji rendering (`fonts-noto-color-emoji`);
  evaluates on OpenClipart's val split (retrieval both ways, zero-shot over its leaf categories, the
  probe), `emoji` (zero-shot on renderings seeded apart from training, composition on two-emoji
  scenes) and `fashion-mnist` (`dataset-fashion-mnist`: zero-shot and the probe on photos).
"""

from __future__ import annotations

from typing import Any

# dotted key -> value, per preset. Every preset sets every key, so no value depends on the order.
PRESETS: dict[str, dict[str, Any]] = {
    "synthetic": {
        "data.source": "synthetic",
        "eval.datasets": ["val", "objects"],
    },
    "real": {
        "data.source": "mix",
        "eval.datasets": ["val", "emoji", "fashion-mnist"],
    },
}
