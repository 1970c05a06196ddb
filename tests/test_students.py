import pytest
import torch
from experiments.distillation import low_bit
from experiments.models import CompactNet, InvertedResidual, LeNet5, depthwise_separable


@pytest.mark.parametrize("block", ["inverted", "separable"])
def test_compact_students_are_small_and_run_on_flat_images(block):
    sizes = []
    for width in (8, 4, 2):
        net = CompactNet(width, block=block).eval()
        assert net(torch.rand(3, 784)).shape == (3, 10)
        sizes.append(sum(p.numel() for p in net.parameters()))
    assert sizes[0] > sizes[1] > sizes[2]
    assert sizes[0] < sum(p.numel() for p in LeNet5().parameters()) / 10


def test_building_blocks_follow_their_definitions():
    block = InvertedResidual(8, 8, stride=1, expand=4).eval()
    x = torch.randn(2, 8, 6, 6)
    torch.testing.assert_close(block(x), x + block.block(x))  # residual when shapes allow
    assert not InvertedResidual(8, 16, stride=2).residual
    depthwise = depthwise_separable(8, 16)[0]
    assert depthwise.groups == 8 and depthwise.weight.shape == (8, 1, 3, 3)
    with pytest.raises(ValueError, match="block must be"):
        CompactNet(4, block="dense")


def test_two_stage_low_bit_beats_plain_calibration_on_real_mnist():
    rows = low_bit(samples=(10,), bits=(2,), joint_epochs=2, networks=("lenet5",), echo=lambda *_: None)
    row = rows[0]
    assert row["independent"] > row["calibrated"]
    assert row["two-stage"] > row["calibrated"]
