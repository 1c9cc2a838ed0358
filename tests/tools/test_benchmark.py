import pytest

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


def test_warns_when_the_machine_is_loaded(tools_data, monkeypatch, caplog):
    benchmark = load_tool("benchmark")
    cfg = load_config(SHAPES_CFG, TINY + tools_data)
    monkeypatch.setattr(benchmark, "read_load", lambda: (7.5, 2))  # an injected busy machine
    stats = benchmark.benchmark(cfg, ("inference",), input_size=(96, 128), warmup=1, iters=2)
    stats = stats["inference"]
    assert stats["min_s"] <= stats["median_s"] <= stats["max_s"]
    assert (stats["load_average"], stats["cores"]) == (7.5, 2)
    assert any("load average 7.50 on 2 cores" in w for w in stats["warnings"])
    logged = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("inference: the machine was busy: load average 7.50" in m for m in logged)


@pytest.mark.parametrize(
    "durations,flagged", [([0.10, 0.10, 0.11, 0.10], False), ([0.10, 0.30, 0.10, 0.11], True)]
)
def test_reports_and_flags_the_spread_of_the_runs(monkeypatch, durations, flagged):
    benchmark = load_tool("benchmark")
    monkeypatch.setattr(benchmark, "read_load", lambda: (0.1, 4))
    now, runs = [0.0], iter(durations)

    def fn():  # a run that takes the next duration on the injected clock
        now[0] += next(runs)

    stats = benchmark._timeit(fn, 0, len(durations), "cpu", "test", clock=lambda: now[0])
    assert stats["min_s"] == pytest.approx(min(durations))
    assert stats["max_s"] == pytest.approx(max(durations))
    median = sum(sorted(durations)[1:3]) / 2
    assert stats["spread"] == pytest.approx((max(durations) - min(durations)) / median)
    assert bool(stats["warnings"]) == flagged
    if flagged:
        assert "spread by 190%" in stats["warnings"][0] and "max 300.0 ms" in stats["warnings"][0]


def test_load_threshold_is_per_core():
    benchmark = load_tool("benchmark")
    even = {"spread": 0.0, "min_s": 1.0, "max_s": 1.0}
    assert benchmark.load_warnings(1.5, 2, even)  # 0.75 per core
    assert not benchmark.load_warnings(1.5, 8, even)  # 0.19 per core
    real_load, cores = benchmark.read_load()
    assert real_load >= 0 and cores >= 1


def test_eager_bf16_and_bad_runtime_combinations(tools_data, monkeypatch, capsys):
    import lite_detr.precision as precision

    benchmark = load_tool("benchmark")
    monkeypatch.setattr(benchmark, "read_load", lambda: (0.1, 2))
    monkeypatch.setattr(precision, "cpu_bf16_support", lambda: "avx512_bf16")
    args = ["--config-file", SHAPES_CFG, "--input-size", "96", "128", "--iters", "1"]
    args += ["--warmup", "0"]
    overrides = [*TINY, *tools_data]
    stats = benchmark.main(args + ["--precision", "bf16"] + overrides)["inference"]
    assert (stats["runtime"], stats["precision"], stats["runs"]) == ("eager", "bf16", 1)
    capsys.readouterr()
    for bad, words in [
        (["--runtime", "onnxruntime", "--precision", "bf16"], "runs the fp32 ONNX file"),
        (["--onnx", "model.onnx"], "--onnx FILE is for --runtime onnxruntime"),
        (["--runtime", "onnxruntime", "--onnx", "missing.onnx"], "does not exist"),
        (["--runtime", "compile", "--tasks", "train"], "times inference only"),
    ]:
        with pytest.raises(SystemExit) as e:
            benchmark.main(args + bad + overrides)
        assert e.value.code == 2
        err = capsys.readouterr().err.strip()
        assert words in err and len(err.splitlines()) == 1, err
