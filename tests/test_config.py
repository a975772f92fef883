from pathlib import Path

import pytest

from maskvlp.config import Config, ConfigError, to_dict
from maskvlp.params import load_config

from .conftest import ROOT


def test_repository_params_yaml_is_valid_and_complete():
    cfg = load_config(ROOT / "params.yaml")
    assert isinstance(cfg, Config)
    # every field of every section is written out in params.yaml (no silent defaults)
    import yaml

    written = yaml.safe_load((ROOT / "params.yaml").read_text())

    def keys(d, prefix=""):
        out = set()
        for k, v in d.items():
            out.add(prefix + k)
            if isinstance(v, dict) and v:
                out |= keys(v, prefix + k + ".")
        return out

    assert keys(to_dict(cfg)) == keys(written)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def test_unknown_key_is_rejected_with_its_name(tmp_path):
    with pytest.raises(ConfigError, match=r"masking\.ratoi"):
        load_config(write(tmp_path, "masking:\n  ratoi: 0.5\n"))


def test_unknown_section_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match="optimiser"):
        load_config(write(tmp_path, "optimiser:\n  lr: 1\n"))


def test_wrong_type_is_rejected_with_its_name(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.image_size"):
        load_config(write(tmp_path, "data:\n  image_size: big\n"))


@pytest.mark.parametrize(
    "override, key",
    [
        ("masking.ratio=1.0", "masking.ratio"),
        ("masking.ratio=-0.1", "masking.ratio"),
        ("masking.anchor_ratio=0", "masking.anchor_ratio"),
        ("masking.threshold=1.5", "masking.threshold"),
        ("masking.strategy=blocks", "masking.strategy"),
        ("data.val_fraction=1", "data.val_fraction"),
        ("data.source=web", "data.source"),
        ("model.image_size=60", "model.image_size"),
        ("train.batch_size=0", "train.batch_size"),
        ("launcher.executor=k8s", "launcher.executor"),
        ("data.synthetic.max_objects=9", "data.synthetic.max_objects"),
    ],
)
def test_out_of_range_values_are_rejected(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])


def test_ratio_that_keeps_no_token_is_rejected():
    # 64 px / 32 px patches = 4 patches; ratio 0.9 keeps int(0.4) = 0 tokens
    with pytest.raises(ConfigError, match="keeps no token"):
        load_config(None, ["model.patch_size=32", "masking.ratio=0.9"])


def test_overrides_apply_and_are_typed():
    cfg = load_config(ROOT / "params.yaml", ["masking.ratio=0.75", "data.synthetic.num_samples=10"])
    assert cfg.masking.ratio == 0.75
    assert cfg.data.synthetic.num_samples == 10


@pytest.mark.parametrize("bad", ["masking.nope=1", "nope=1", "masking.ratio"])
def test_bad_overrides_are_rejected(bad):
    with pytest.raises(ConfigError):
        load_config(None, [bad])


def test_interpolations_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="interpolation"):
        load_config(write(tmp_path, "seed: 1\ntrain:\n  run_name: r${seed}\n"))


def test_missing_params_file_says_what_to_do(tmp_path):
    with pytest.raises(ConfigError, match="--params"):
        load_config(tmp_path / "missing.yaml")


def test_train_seed_follows_seed_unless_given_so_replicates_share_shards_and_eval_sets():
    assert load_config(None, ["seed=3"]).train.seed == 3
    cfg = load_config(None, ["seed=3", "train.seed=11"])
    assert (cfg.seed, cfg.train.seed) == (3, 11)  # shards and evaluation sets follow seed, training train.seed


def test_the_typed_defaults_are_params_yaml_s_values():
    """Tests build configs from the typed defaults and hand their shards to stages that read params.yaml:
    a default that differs (max_per_class 0 vs 100 once) makes every such stage refuse the shards."""
    from omegaconf import OmegaConf

    def flat(cfg, prefix=""):
        out = {}
        for key, value in cfg.items():
            out |= flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key: value}
        return out

    defaults = flat(OmegaConf.to_container(OmegaConf.structured(load_config(None, []))))
    yaml = flat(OmegaConf.to_container(OmegaConf.structured(load_config(ROOT / "params.yaml", []))))
    assert {k: (v, yaml.get(k)) for k, v in defaults.items() if yaml.get(k) != v} == {}


# ------------------------------------------------------------------ nothing from params reaches a shell
INJECTIONS = ["debug\n#SBATCH --wrap=touch /tmp/pwned", "x\ntouch /tmp/pwned", "x\rtouch", "a\tb", "a\x7fb"]


@pytest.mark.parametrize("field", ["job_name", "partition", "account", "qos"])
@pytest.mark.parametrize("value", INJECTIONS)
def test_control_characters_in_launcher_strings_are_refused_naming_the_key(field, value, tmp_path):
    """A newline in launcher.job_name ended the #SBATCH line: the batch script ran an injected `touch`."""
    import yaml

    key = f"launcher.{field}"
    with pytest.raises(ConfigError, match=rf"{key}: control character") as exc:
        load_config(write(tmp_path, yaml.safe_dump({"launcher": {field: value}})))
    assert repr(value[[ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value].index(True)]) in str(exc.value)
    with pytest.raises(ConfigError, match=rf"{key}: control character"):
        load_config(None, [f"{key}={yaml.safe_dump(value, default_style=chr(34)).strip()}"])


@pytest.mark.parametrize(
    "params, match",
    [
        ({"x\ntouch /tmp/pwned": "1"}, r"launcher\.additional_parameters: control character '\\n' in the name"),
        ({"comment": "x\ntouch /tmp/pwned"}, r"launcher\.additional_parameters\.comment: control character '\\n'"),
        ({"Constraint": "gpu"}, r"launcher\.additional_parameters: 'Constraint' is not an sbatch option name"),
        ({"--constraint": "gpu"}, r"launcher\.additional_parameters: '--constraint' is not an sbatch option name"),
        ({"constraint gpu": 1}, r"is not an sbatch option name"),
        (
            {"partition": "other"},
            r"launcher\.additional_parameters\.partition: not allowed: maskvlp sets it from launcher\.partition",
        ),
        ({"job_name": "x"}, r"launcher\.additional_parameters\.job_name: .* launcher\.job_name"),
        ({"time": 5}, r"launcher\.additional_parameters\.time: .* launcher\.timeout_min"),
        ({"signal": "USR1@60"}, r"launcher\.additional_parameters\.signal: .* preemption"),
        ({"output": "/tmp/x"}, r"launcher\.additional_parameters\.output: "),
        (
            {"part": "other"},
            r"launcher\.additional_parameters\.part: not allowed: .*abbreviation of --partition.* launcher\.partition",
        ),
        ({"wrap": "touch /tmp/pwned"}, r"launcher\.additional_parameters\.wrap: .*shell command"),
        ({"exclusive": False}, r"launcher\.additional_parameters\.exclusive: .*true"),
        ({"exclusive": None}, r"launcher\.additional_parameters\.exclusive: "),
        ({"constraint": ["a", "b"]}, r"launcher\.additional_parameters\.constraint: "),
    ],
)
def test_bad_additional_sbatch_parameters_are_refused_naming_the_key(params, match, tmp_path):
    import yaml

    with pytest.raises(ConfigError, match=match):
        load_config(write(tmp_path, yaml.safe_dump({"launcher": {"additional_parameters": params}})))


def test_usual_launcher_values_pass():
    cfg = load_config(
        None,
        [
            "launcher.job_name=my-run_2",
            "launcher.partition=gpu,debug",
            "launcher.account=proj-123",
            "launcher.qos=high",
            'launcher.additional_parameters={constraint: "a100|h100", exclusive: true, gpus: 2, '
            'mem_per_cpu: 4G, comment: "two words", ntasks: 4}',
        ],
    )
    assert cfg.launcher.additional_parameters["constraint"] == "a100|h100"


@pytest.mark.parametrize("name", ["..", ".", "", "a/b", "../x", "/abs", "x\ny"])
def test_run_name_must_be_a_plain_name(name):
    """train.run_name=.. put the run folder at the project root."""
    with pytest.raises(ConfigError, match=r"train\.run_name"):
        load_config(None, [f'train.run_name="{name}"'.replace("\n", "\\n")])


@pytest.mark.parametrize("name", ["default", "trial-0000", "flip.v2", "run_1", "..x", "a..b"])
def test_plain_run_names_pass(name):
    assert load_config(None, [f"train.run_name={name}"]).train.run_name == name


def test_control_characters_in_runs_dir_are_refused():
    """Slurm's log paths (under train.runs_dir) are written into #SBATCH lines."""
    with pytest.raises(ConfigError, match=r"train\.runs_dir: control character '\\n'"):
        load_config(None, ['train.runs_dir="runs\\ntouch /tmp/pwned"'])


def test_an_override_that_is_not_yaml_is_a_config_error():
    """`--set seed=[1` ended in a yaml traceback."""
    with pytest.raises(ConfigError, match=r"--set seed=\[1: "):
        load_config(None, ["seed=[1"])
