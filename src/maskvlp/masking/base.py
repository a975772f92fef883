"""The masking registry and what every strategy shares: kept-token indices, the ratio, random masking.

A strategy is one module that calls :func:`register_strategy` with its mask function and what it knows
of itself (its own `masking.*` keys, their checks, its token count, its mask's FLOPs, its calibration,
its pictures); config validation, training, FLOPs, sweeps, `maskvlp masks` and reports ask the registry
and know no strategy by name. Mask functions are pure and batched: no module state, no Python loop over
images, randomness from an explicit `torch.Generator` on the images' device. Each returns the indices
of the kept patch tokens, (B, n_keep) with the same n_keep for every image, plus per-image statistics.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from maskvlp import config


@dataclass
class MaskResult:
    keep_idx: torch.Tensor  # (B, n_keep) long, indices into the L patches, ascending
    cluster_coverage: torch.Tensor  # (B,) float: fraction of patches in a cluster (0 unless cluster)
    num_anchors: int  # anchors per image (0 unless cluster)
    num_patches: int
    clustered: torch.Tensor | None = None  # (B, L) bool
    anchor_idx: torch.Tensor | None = None  # (B, A) long
    cluster_id: torch.Tensor | None = None  # (B, L) long: most similar anchor's slot, -1 if unclustered
    # the images the tower sees instead of the input, where the strategy changes them (resize: smaller);
    # keep_idx then indexes their patches, and num_patches stays the input's L (the ratio is against it)
    images: torch.Tensor | None = None

    @property
    def mask_ratio(self) -> float:
        """The fraction of patch tokens removed."""
        return 1.0 - self.keep_idx.shape[1] / self.num_patches


# ----------------------------------------------------------------------------- parameters
def num_keep(num_patches: int, ratio: float) -> int:
    """Kept tokens at a mask ratio: int(L * (1 - ratio)), at least 1 (FLIP)."""
    return max(1, int(num_patches * (1.0 - ratio)))


# -------------------------------------------------------------------------------- patches
def count_patches(images: torch.Tensor, patch_size: int) -> int:
    """L for images (B, C, H, W); explains what to do when they do not divide into patches."""
    h, w = images.shape[-2:]
    if h % patch_size or w % patch_size:
        raise ValueError(
            f"image size {h}x{w} is not divisible by patch_size {patch_size}: resize images to a multiple "
            f"of {patch_size} (model.image_size) or change model.patch_size"
        )
    return (h // patch_size) * (w // patch_size)


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """images: (B, C, H, W) -> (B, L, P*P*C), patches in row-major order (as a stride-P conv sees them)."""
    b, c, h, w = images.shape
    count_patches(images, patch_size)
    gh, gw = h // patch_size, w // patch_size
    x = images.reshape(b, c, gh, patch_size, gw, patch_size)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, gh * gw, patch_size * patch_size * c)


# ---------------------------------------------------------------------------- kept tokens
def _rand(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device=device)


def _keep_lowest(score: torch.Tensor, n_keep: int) -> torch.Tensor:
    """Indices of the n_keep lowest scores per row, sorted ascending (stable gather order)."""
    keep = torch.topk(score, n_keep, dim=1, largest=False, sorted=False).indices
    return keep.sort(dim=1).values


def keep_all(batch: int, num_patches: int, device: torch.device | str = "cpu") -> MaskResult:
    keep = torch.arange(num_patches, device=device).expand(batch, -1).contiguous()
    return MaskResult(keep, torch.zeros(batch, device=device), 0, num_patches)


def random_mask(
    batch: int,
    num_patches: int,
    ratio: float,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> MaskResult:
    """FLIP: keep a uniformly random subset of num_keep(L, ratio) patches per image."""
    score = _rand((batch, num_patches), generator, torch.device(device))
    return MaskResult(
        _keep_lowest(score, num_keep(num_patches, ratio)), torch.zeros(batch, device=device), 0, num_patches
    )


# ------------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class MaskContext:
    """What a strategy may use besides the images and the masking params."""

    patch_size: int
    generator: torch.Generator | None = None
    embed_tokens: torch.Tensor | None = None  # (B, L, E) layer-0 tokens, when the strategy asked for them
    fusion_weight: float = 0.0


MaskFn = Callable[[torch.Tensor, Any, MaskContext], MaskResult]


def _fixed_ratio(k: Any, num_patches: int) -> int | None:
    return num_keep(num_patches, k.ratio)


@dataclass(frozen=True)
class Strategy:
    """Everything the rest of maskvlp may ask about one masking strategy."""

    name: str
    fn: MaskFn
    params: type | None = None  # dataclass of the strategy's own `masking.*` keys with their defaults
    check: Callable[[Any, int], None] | None = None  # (masking config, L): raise ValueError("masking.<key> ...")
    describe: Callable[[Any], str] | None = None  # a short label of the config for reports
    # tokens kept per image at L patches, or None where it changes from batch to batch
    kept_tokens: Callable[[Any, int], int | None] = _fixed_ratio
    # tokens a compute-matched budget plans with where kept_tokens is None: the mean a calibration aims
    # at (None: kept_tokens, and no plan where that is None)
    planned_tokens: Callable[[Any, int], int | None] | None = None
    # patches the tower's patch embedding sees per image at L patches (None: all L; resize: fewer)
    embedded_patches: Callable[[Any, int], int] | None = None
    # FLOPs of choosing one image's mask: (config, L, patch size, embedding width, samples seen or None
    # for the whole run) -> FLOPs (docs/records.md)
    mask_flops: Callable[[Any, int, int, int, int | None], float] = lambda k, n, p, width, seen: 0.0
    # weight of the layer-0 patch tokens the mask function wants at `samples seen` (0: none wanted)
    embed_weight: Callable[[Any, int], float] = lambda k, seen: 0.0
    # (config, a loader of normalised training images, patch size, generator, the batch size one mask
    # call sees in training) -> (keys to set, a line saying so), or None when it calibrates nothing (it
    # loads the images only when it needs them)
    calibrate: (
        Callable[[Any, Callable[[], torch.Tensor], int, torch.Generator | None, int], tuple[dict, str] | None] | None
    ) = None
    derive: Callable[[Any, int], None] | None = None  # fill keys left at null from train.samples
    pictures: Callable[[Any], list[Any]] | None = None  # the configs `maskvlp masks` draws for this strategy
    record: Callable[[Any], dict[str, Any]] = lambda k: {}  # its keys worth a place in result.json's masking


STRATEGIES: dict[str, Strategy] = {}


def register_strategy(name: str, fn: MaskFn, **knowledge: Any) -> Strategy:
    """Make `masking.strategy: <name>` valid everywhere (config, training, FLOPs, sweeps, pictures,
    reports). `knowledge` are the :class:`Strategy` fields; `params` adds the strategy's own keys to
    params.yaml's `masking` section, which must not clash with another strategy's."""
    strategy = Strategy(name, fn, **knowledge)
    taken = {f.name: "masking" for f in dataclasses.fields(config.MaskingConfig)}
    for other in STRATEGIES.values():
        if other.name != name and other.params is not None:
            taken.update({f.name: other.name for f in dataclasses.fields(other.params)})
    for f in dataclasses.fields(strategy.params) if strategy.params is not None else ():
        if f.name in taken:
            raise ValueError(f"masking strategy {name!r}: key masking.{f.name} is already {taken[f.name]}'s")
    STRATEGIES[name] = strategy
    return strategy


def get_strategy(name: str) -> Strategy:
    if name not in STRATEGIES:
        raise ValueError(f"masking.strategy must be one of {', '.join(STRATEGIES)}, got {name!r}")
    return STRATEGIES[name]


_SCHEMAS: dict[tuple, type] = {}


def masking_schema() -> type:
    """The dataclass of params.yaml's `masking` section: config.MaskingConfig (strategy, ratio) plus
    every registered strategy's own keys, in registration order. The keys stay flat
    (`masking.threshold`), as recorded runs, dvc.lock and sweep files name them."""
    owners = tuple((s.name, s.params) for s in STRATEGIES.values() if s.params is not None)
    if owners not in _SCHEMAS:
        fields = []
        for _, params in owners:
            hints = typing.get_type_hints(params)
            for f in dataclasses.fields(params):
                default = {"default": f.default} if f.default is not dataclasses.MISSING else {}
                if f.default_factory is not dataclasses.MISSING:
                    default = {"default_factory": f.default_factory}
                fields.append((f.name, hints[f.name], dataclasses.field(**default)))
        schema = dataclasses.make_dataclass("MaskingConfig", fields, bases=(config.MaskingConfig,))
        schema.__module__ = __name__  # found again by name (pickle) through the module __getattr__ below
        _SCHEMAS[owners] = schema
    return _SCHEMAS[owners]


def __getattr__(name: str) -> Any:
    if name == "MaskingConfig":
        return masking_schema()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def strategy_config(**values: Any) -> Any:
    """A masking config (params.yaml's `masking` section) from keyword values; the rest default."""
    return masking_schema()(**values)


def check_config(k: Any, num_patches: int) -> None:
    """Validate a masking config for L patches: the keys every strategy shares, then the strategy's own.
    Raises ValueError naming the key (params.validate turns it into a ConfigError)."""
    strategy = get_strategy(k.strategy)
    if not (0.0 <= k.ratio < 1.0):
        raise ValueError(f"masking.ratio must be in [0, 1), got {k.ratio!r}")
    if int(num_patches * (1.0 - k.ratio)) < 1:
        raise ValueError(f"masking.ratio keeps no token of the {num_patches} patches; lower it, got {k.ratio!r}")
    if strategy.check is not None:
        strategy.check(k, num_patches)


def describe(k: Any) -> str:
    """A short label such as `random r=0.5` or `cluster a=0.03 t=0.5 r=0.5`."""
    strategy = get_strategy(k.strategy)
    return strategy.describe(k) if strategy.describe else f"{k.strategy} r={k.ratio}"


def kept_tokens(k: Any, num_patches: int) -> int | None:
    """Tokens each image keeps under `k`, or None where the count changes from batch to batch."""
    return get_strategy(k.strategy).kept_tokens(k, num_patches)


def planned_tokens(k: Any, num_patches: int) -> int | None:
    """Tokens per image a compute-matched budget plans with: kept_tokens, or where that changes from
    batch to batch the mean the strategy's calibration aims at (None: no plan can be made)."""
    strategy = get_strategy(k.strategy)
    fixed = strategy.kept_tokens(k, num_patches)
    return fixed if fixed is not None or strategy.planned_tokens is None else strategy.planned_tokens(k, num_patches)


def embedded_patches(k: Any, num_patches: int) -> int:
    """Patches the patch embedding sees per image under `k`: all L but where the strategy shrinks the
    image (resize)."""
    strategy = get_strategy(k.strategy)
    return num_patches if strategy.embedded_patches is None else strategy.embedded_patches(k, num_patches)


def mask_flops(k: Any, num_patches: int, patch_size: int, embed_width: int, samples_seen: int | None = None) -> float:
    """FLOPs of choosing one image's mask under `k` (at `samples_seen`; None: as over the whole run)."""
    return get_strategy(k.strategy).mask_flops(k, num_patches, patch_size, embed_width, samples_seen)


def calibrate(
    k: Any,
    images: Callable[[], torch.Tensor | Iterable[torch.Tensor]],
    patch_size: int,
    generator: torch.Generator | None,
    batch_size: int,
) -> tuple[Any, str]:
    """`k` with the keys its strategy calibrates set, and a line saying what was set ("" when the
    strategy calibrates nothing or its calibration is off). `images()` gives the normalised images the
    calibration looks at, called only when needed: one tensor, or training batches one by one (so that
    many can be looked at without holding them); `batch_size`: the images one mask call sees in
    training (train.batch_size), for strategies whose mask depends on the batch."""
    strategy = get_strategy(k.strategy)
    found = strategy.calibrate(k, images, patch_size, generator, batch_size) if strategy.calibrate else None
    return (dataclasses.replace(k, **found[0]), found[1]) if found else (k, "")


def make_mask(images: torch.Tensor, k: Any, ctx: MaskContext) -> MaskResult:
    """The kept tokens for `images` under an already validated config `k` (training's hot path: the
    config was checked once at load), in fp32 whatever autocast is active."""
    with torch.autocast(images.device.type, enabled=False):
        return get_strategy(k.strategy).fn(images.float(), k, ctx)


def compute_mask(
    images: torch.Tensor,
    k: Any,
    patch_size: int,
    generator: torch.Generator | None = None,
    embed_tokens: torch.Tensor | None = None,
    fusion_weight: float = 0.0,
) -> MaskResult:
    """The kept tokens for `images` (B, 3, H, W) normalised under masking config `k` (strategy, ratio,
    and the strategy's own keys), checked first, computed in fp32 whatever autocast is active."""
    check_config(k, count_patches(images, patch_size))
    return make_mask(images, k, MaskContext(patch_size, generator, embed_tokens, fusion_weight))


def _none(images: torch.Tensor, k: Any, ctx: MaskContext) -> MaskResult:
    return keep_all(images.shape[0], count_patches(images, ctx.patch_size), images.device)


def _random(images: torch.Tensor, k: Any, ctx: MaskContext) -> MaskResult:
    return random_mask(images.shape[0], count_patches(images, ctx.patch_size), k.ratio, ctx.generator, images.device)


register_strategy("none", _none, describe=lambda k: "none", kept_tokens=lambda k, n: n)
register_strategy("random", _random)
