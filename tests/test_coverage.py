"""Where masking removes tokens: object patches from boxes, and the object / background split."""

import torch

from maskvlp.masking import MaskResult, cluster_mask
from maskvlp.probe import object_patches, split_stats


def test_object_patches_follow_the_boxes_scaled_to_the_grid():
    # a 64 px image, 8 x 8 grid of 8 px patches; a box covering patches (1..2, 2..4) exactly
    meta = {"objects": [{"box": [16, 8, 24]}]}  # x0=16 (column 2), y0=8 (row 1), side 24 (3 patches)
    grid = object_patches([meta], 64, 8).view(8, 8)
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[1:4, 2:5] = True
    assert torch.equal(grid, expected)
    # stored at 128 px, the same box in that image's pixels lands on the same patches
    assert torch.equal(object_patches([{"objects": [{"box": [32, 16, 48]}]}], 128, 8).view(8, 8), expected)
    # a box covering under half a patch does not make it an object patch
    assert not object_patches([{"objects": [{"box": [0, 0, 3]}]}], 64, 8).any()
    assert not object_patches([{}], 64, 8).any()


def test_split_stats_count_clusters_and_removals_on_each_side():
    objects = torch.tensor([[True, True, False, False]])
    mask = MaskResult(
        keep_idx=torch.tensor([[1, 3]]),
        cluster_coverage=torch.tensor([0.5]),
        num_anchors=1,
        num_patches=4,
        clustered=torch.tensor([[True, False, True, False]]),
    )
    assert split_stats(mask, objects) == {
        "coverage_objects": 0.5,
        "coverage_background": 0.5,
        "removed_objects": 0.5,
        "removed_background": 0.5,
    }
    mask.keep_idx = torch.tensor([[2, 3]])
    assert (
        split_stats(mask, objects)["removed_objects"] == 1.0 and split_stats(mask, objects)["removed_background"] == 0
    )


def test_cluster_masking_of_one_flat_object_on_noise_removes_the_object():
    """An object of one pattern on a noisy background: an anchor on the object clusters all of it."""
    torch.manual_seed(0)
    img = torch.randn(1, 3, 32, 32)
    ramp = torch.linspace(-1, 1, 4).repeat(4)[None, :]  # one pattern in every 4x4 patch of the object
    obj = torch.zeros(1, 3, 32, 32)
    for c, gain in enumerate((1.0, -0.5, 0.3)):
        obj[0, c, 8:24, 8:24] = (ramp.view(4, 4) * gain).repeat(4, 4)
    img[:, :, 8:24, 8:24] = obj[:, :, 8:24, 8:24]
    objects = object_patches([{"objects": [{"box": [8, 8, 16]}]}], 32, 8)
    on_object = 0
    for seed in range(40):  # one anchor per image, drawn at random
        mask = cluster_mask(img, 4, 0.5, 1 / 64, 0.9, torch.Generator().manual_seed(seed))
        stats = split_stats(mask, objects)
        if objects[0, mask.anchor_idx[0]].all():
            on_object += 1
            assert stats["coverage_objects"] == 1.0 and stats["coverage_background"] < 0.05
        else:
            assert stats["coverage_objects"] == 0.0
    assert 0 < on_object < 40  # 16 of the 64 patches are the object
