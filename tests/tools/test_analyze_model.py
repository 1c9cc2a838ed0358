import pytest
from detectron2.config import instantiate

from lite_detr.data import sample_inputs
from lite_detr.engine import load_config

from .conftest import SHAPES_CFG, TINY, load_tool


def test_flops_count_our_ops_and_report_encoder_row():
    analyze_model = load_tool("analyze_model")
    cfg = load_config(SHAPES_CFG, TINY)
    model = instantiate(cfg.model).eval()
    inputs = sample_inputs(cfg, 1, (128, 160))
    with_ops = analyze_model.count_flops(model, inputs)
    without = analyze_model.count_flops(model, inputs, with_lite_detr_ops=False)
    # KDA runs in the encoder and the decoder: only the handles count it
    assert with_ops["encoder"] > without["encoder"] > 0
    assert with_ops["decoder"] > without["decoder"]
    assert with_ops[""] > without[""]
    for name in ("backbone", "neck", "encoder", "decoder"):
        assert with_ops[name] > 0
    # the total is the sum of its top-level modules plus the detector's own ops
    assert with_ops[""] >= sum(v for k, v in with_ops.items() if k)
    table = analyze_model.flop_table(model, with_ops)
    assert "| encoder" in table and "| total" in table
    # a user's own detectron2 FlopCountAnalysis, no handles passed, counts the same
    from detectron2.utils.analysis import FlopCountAnalysis

    plain = FlopCountAnalysis(model, inputs).unsupported_ops_warnings(False)
    assert plain.by_module()["model.encoder"] == with_ops["encoder"]


def test_overrides_may_follow_tasks(capsys):
    analyze_model = load_tool("analyze_model")
    parser = analyze_model.get_parser()
    args = parser.parse_args(["--config-file", "C", "--tasks", "flop", "parameter", *TINY])
    assert args.tasks == ["flop", "parameter"] and args.task_overrides == TINY and not args.opts
    with pytest.raises(SystemExit):
        parser.parse_args(["--config-file", "C", "--tasks", "parameter", "flops"])
    assert "invalid choice: 'flops'" in capsys.readouterr().err


def test_analyze_tasks_and_dataset_fallback(tools_data):
    analyze_model = load_tool("analyze_model")
    cfg = load_config(SHAPES_CFG, TINY + tools_data)
    ret = analyze_model.analyze(cfg, ["flop", "parameter"], input_size=(96, 96))
    assert ret["flops"]["encoder"] > 0
    assert ret["params"][""] == sum(p.numel() for p in instantiate(cfg.model).parameters())


def test_bad_input_size_and_num_inputs_give_one_line(capsys):
    import pytest

    analyze_model = load_tool("analyze_model")
    parser = analyze_model.get_parser()
    for argv in (["--input-size", "0", "0"], ["--input-size", "-5", "10"], ["--num-inputs", "0"]):
        with pytest.raises(SystemExit) as e:
            parser.parse_args(["--config-file", SHAPES_CFG, *argv])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert "is not a positive integer" in err and "Traceback" not in err
    # an image too small for the model's queries: the model's ValueError, which main() prints
    # as one line
    cfg = load_config(SHAPES_CFG, TINY)
    with pytest.raises(ValueError, match="30 queries exceed the 4 encoder tokens"):
        analyze_model.analyze(cfg, ["flop"], (1, 1), 1)


def test_random_inputs_without_dataset_cover_every_fallback_size():
    from types import SimpleNamespace

    analyze_model = load_tool("analyze_model")
    no_dataset = SimpleNamespace()  # no dataloader.test: the dataset is not there
    inputs = sample_inputs(no_dataset, 1, fallback_sizes=analyze_model.TYPICAL_COCO_SIZES)
    assert [tuple(x["image"].shape[-2:]) for x in inputs] == [(800, 1066), (800, 1199)]
    inputs = sample_inputs(no_dataset, 3, fallback_sizes=((64, 96), (32, 48)))
    assert [(x["height"], x["width"]) for x in inputs] == [(64, 96), (32, 48), (64, 96)]
    # an explicit size wins over the fallback
    inputs = sample_inputs(no_dataset, 2, (40, 56), fallback_sizes=((64, 96), (32, 48)))
    assert [tuple(x["image"].shape[-2:]) for x in inputs] == [(40, 56)] * 2
