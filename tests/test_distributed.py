"""Statistics gathered by two gloo processes equal those of one process on all the data."""


import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

import netcompress as nc
from conftest import SmallNet


def _worker(rank: int, world: int, init_file: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        net = SmallNet()
        data = torch.randn(12, 3, 8, 8, generator=torch.Generator().manual_seed(1))
        shard = data[rank::world]
        stats = nc.collect(net, shard.split(2), progress=False)
        m = stats["conv2"]
        if rank == 0:
            save_file({"gram": m.gram, "sum": m.input_sum, "max": m.response_max,
                       "rate": m.activation_rate, "count": torch.tensor([m.count])}, out)
    finally:
        dist.destroy_process_group()


def test_two_processes_gather_the_statistics_of_all_data(tmp_path):
    out = str(tmp_path / "stats.safetensors")
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), out), nprocs=2, join=True)
    gathered = load_file(out)

    torch.manual_seed(0)
    net = SmallNet()
    data = torch.randn(12, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    single = nc.collect(net, data.split(4), progress=False)["conv2"]
    np.testing.assert_allclose(gathered["gram"].numpy(), single.gram.numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(gathered["sum"].numpy(), single.input_sum.numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(gathered["max"].numpy(), single.response_max.numpy())
    np.testing.assert_allclose(gathered["rate"].numpy(), single.activation_rate.numpy())
    assert int(gathered["count"]) == single.count
