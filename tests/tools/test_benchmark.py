from lite_detr.engine import load_config

from .conftest import SHAPES_CFG, TINY, load_tool


def test_benchmark_inference_train_data(tools_data):
    benchmark = load_tool("benchmark")
    cfg = load_config(SHAPES_CFG, TINY + tools_data)
    ret = benchmark.benchmark(
        cfg, ("inference", "train", "data"), input_size=(96, 128), warmup=1, iters=2
    )
    inf = ret["inference"]
    assert 0 < inf["p10_s"] <= inf["median_s"] <= inf["p90_s"]
    assert inf["fps"] > 0 and inf["peak_memory_mb"] > 0 and inf["runs"] == 2
    assert ret["train"]["median_s"] > 0 and ret["train"]["batch_size"] == 2
    assert ret["data"]["images_per_s"] > 0


def test_overrides_may_follow_tasks(tools_data):
    benchmark = load_tool("benchmark")
    args = ["--config-file", SHAPES_CFG, "--iters", "1", "--tasks", "data", *TINY, *tools_data]
    ret = benchmark.main(args)
    assert set(ret) == {"data"} and ret["data"]["batches"] == 1
