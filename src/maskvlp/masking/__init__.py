"""Which patch tokens a masked CLIP step keeps: none, random (FLIP), cluster (Wei et al. 2024), grid,
block or resize (CLIPA, Li et al. 2023).

base.py holds the registry and what every strategy shares (none and random among them); every other
module here is one strategy that registers itself when imported (docs/algorithms.md describes the
methods as implemented). A new strategy is one module calling `register_strategy` (README, "Adding a
masking strategy").
"""

from maskvlp.masking.base import (  # noqa: F401 (the package's face)
    STRATEGIES,
    MaskContext,
    MaskResult,
    Strategy,
    calibrate,
    check_config,
    compute_mask,
    describe,
    embedded_patches,
    get_strategy,
    kept_tokens,
    make_mask,
    mask_flops,
    masking_schema,
    num_keep,
    planned_tokens,
    random_mask,
    register_strategy,
    strategy_config,
)
from maskvlp.masking.cluster import (  # noqa: F401
    calibrate_official_threshold,
    calibrate_threshold,
    cluster_mask,
    find_clusters,
    fusion_weight,
    mask_flops_per_image,
    num_anchors,
    official_cluster_mask,
    standardised_patches,
)

# isort: split
# CLIPA's strategies after the two papers' (registration order is the order of `maskvlp masks` columns)
from maskvlp.masking.block import block_mask, block_shape  # noqa: F401
from maskvlp.masking.grid import grid_mask  # noqa: F401
from maskvlp.masking.resize import resize_images, resized_side  # noqa: F401
