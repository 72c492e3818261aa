"""gor_det.config: parsing, overrides, and the one-line errors for bad input."""

from pathlib import Path

import pytest

from gor_det.config import ConfigError, GorCfg, QuantCfg, load_run_cfg, parse_gor, suggest

UL_KEYS = ["model", "data", "epochs", "imgsz", "batch", "lr0"]
ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path, text):
    p = tmp_path / "run.yaml"
    p.write_text(text)
    return p


def test_defaults_mean_plain_training():
    g = parse_gor(None)
    assert g == GorCfg() and not g.distilling and not g.quantizing


def test_full_section_and_overrides(tmp_path):
    p = write(tmp_path, "model: yolov8n.yaml\nepochs: 5\ngor:\n  teachers: [t.pt]\n  quant: {w_bits: 4}\n")
    run = load_run_cfg(p, ["epochs=3", "gor.balance.method=fixed", "gor.distill.cls_T=4", "gor.quant.a_bits=6"],
                       UL_KEYS)
    assert run.ultralytics == {"model": "yolov8n.yaml", "epochs": 3}
    g = run.gor
    assert g.teachers[0].model == "t.pt" and g.balance.method == "fixed" and g.distill.cls_T == 4.0
    assert g.quant == QuantCfg(w_bits=4, a_bits=6)
    assert run.to_dict()["gor"]["quant"]["w_bits"] == 4


@pytest.mark.parametrize("balance, lr, scalar_lr", [
    ({}, "auto", 0.01),  # gor (the default) was benchmarked at 0.01
    ({"method": "gor", "lr": 0.002}, 0.002, 0.002),  # an explicit lr wins
    ({"method": "gor", "lr": "0.02"}, 0.02, 0.02),  # a number given as text (key=value overrides) is a number
    ({"lr": None}, None, None),  # null: the trainer's lr
])
def test_scalar_lr_auto_resolves_per_balancer(balance, lr, scalar_lr):
    from gor_det.balance import balancer_class

    b = parse_gor({"balance": balance}).balance
    assert b.lr == lr and balancer_class(b.method).scalar_lr(b) == scalar_lr


def test_quant_shorthand():
    assert parse_gor({"quant": True}).quantizing
    assert not parse_gor({"quant": False}).quantizing


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["epocs=3"], "unknown key 'epocs' in the run cfg (Ultralytics keys + 'gor') (did you mean 'epochs'?)"),
        (["gor.balance.methd=gor"], "unknown key 'methd' in gor.balance (did you mean 'method'?)"),
        (["gor.quantt.w_bits=4"], "unknown key 'quantt' in gor (did you mean 'quant'?)"),
        (["gor.balance.method=gorr"], "gor.balance.method='gorr' is not one of fixed"),
        (["gor.quant.w_bits=9"], "gor.quant.w_bits=9 is out of range; use 2..8"),
        (["gor.balance.grad_every=0"], "gor.balance.grad_every=0 must be >= 1 (1: measure every step)"),
        (["gor.quant.start_epoch=-1"], "gor.quant.start_epoch=-1 must be >= 0 (0: quantize from the first epoch)"),
        (["gor.export.calib_images=0"], "gor.export.calib_images=0 must be >= 1 (e.g. 32)"),
        (["gor.quant.w_bits=x"], "gor.quant.w_bits must be a number, got 'x'"),
        (["gor.teachers=[{model: t.pt, weight: 0}]"], "gor.teachers[0].weight=0.0 must be a positive number"),
        (["gor.teachers=[{model: t.pt, feat_weight: -1}]"], "gor.teachers[0].feat_weight=-1.0 must be a number >= 0"),
        (["gor.teachers=[{model: a.pt, feat_weight: 0}, {model: b.pt, feat_weight: 0}]"],
         "every gor.teachers[].feat_weight is 0 but gor.distill.feat > 0"),
        (["gor.balance.lr=fast"], "gor.balance.lr='fast' must be a number, auto (the balancer's benchmarked lr) or null"),
        (["gor.balance.lr=0"], "gor.balance.lr=0.0 must be a positive number (e.g. 0.01), auto or null"),
        (["gor.balance.w_kd=-1"], "gor.balance.w_kd=-1.0 must be a number >= 0 (0: no KD)"),
        (["gor.balance.method=fixed", "gor.balance.w_kd_end=-1"], "gor.balance.w_kd_end=-1.0 must be a number >= 0"),
        (["gor.balance.method=fixed", "gor.balance.w_kd_end=0", "gor.balance.schedule=exp"],
         "gor.balance.schedule=exp needs w_kd > 0 and w_kd_end > 0 (got 1.0 -> 0.0); use schedule=linear"),
        (["gor.balance.schedule=cosine"], "gor.balance.schedule='cosine' is not one of linear, exp"),
        (["epochs"], "override 'epochs' must look like key=value"),
        (["gor.distill.cls_T=0"], "gor.distill.cls_T=0.0 is out of range; use > 0 (class-logit KD temperature"),
        (["gor.distill.cls_T=-1"], "gor.distill.cls_T=-1.0 is out of range; use > 0"),
        (["gor.distill.box_T=.nan"], "gor.distill.box_T=nan is out of range; use > 0"),
        (["gor.distill.feat_tau=0"], "gor.distill.feat_tau=0.0 is out of range; use > 0"),
        (["gor.distill.feat=-0.5"], "gor.distill.feat=-0.5 is out of range; use >= 0 (weight of feature KD"),
        (["gor.distill.cls=-1"], "gor.distill.cls=-1.0 is out of range; use >= 0"),
        (["gor.distill.box=-1"], "gor.distill.box=-1.0 is out of range; use >= 0"),
        (["gor.balance.method=fixed", "gor.balance.w_kd=.inf"], "gor.balance.w_kd=inf must be a number >= 0"),
        (["gor.quant.calib_batches=0"], "gor.quant.calib_batches=0 is out of range; use >= 1 (training batches"),
        (["gor.quant.percentile=150"], "gor.quant.percentile=150.0 is out of range; use 50 < x <= 100 (percent"),
        (["gor.quant.percentile=0"], "gor.quant.percentile=0.0 is out of range; use 50 < x <= 100"),
        (["gor.quant.freeze_bn_epoch=-2"], "gor.quant.freeze_bn_epoch=-2 is out of range; use >= -1"),
        (["gor.quant.scale_lr=0"], "gor.quant.scale_lr=0.0 is out of range; use > 0"),
        (["gor.export.imgsz=0"], "gor.export.imgsz=0 is out of range; use >= 32"),
        (["gor.threads=0"], "gor.threads=0 is out of range; use >= 1"),
    ],
)
def test_bad_input_is_one_clear_line(overrides, message):
    with pytest.raises(ConfigError) as e:
        load_run_cfg(None, overrides, UL_KEYS)
    assert str(e.value).startswith(message)
    assert "\n" not in str(e.value)


def test_values_on_the_edge_of_their_range_are_accepted():
    g = parse_gor({"distill": {"feat": 0, "cls": 0, "box": 0, "cls_T": 0.5},
                   "balance": {"method": "fixed", "w_kd": 0},
                   "quant": {"calib_batches": 1, "percentile": 100, "freeze_bn_epoch": -1}, "threads": 1})
    assert g.quant.percentile == 100.0 and g.balance.w_kd == 0.0 and g.distill.cls_T == 0.5


def test_missing_and_invalid_cfg_file(tmp_path):
    with pytest.raises(ConfigError, match="cfg file not found: .*nope.yaml"):
        load_run_cfg(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_run_cfg(write(tmp_path, "a: [1, 2"))
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_run_cfg(write(tmp_path, "- 1\n- 2\n"))


def test_suggest():
    assert suggest("w_bit", ["w_bits", "a_bits"]) == " (did you mean 'w_bits'?)"
    assert suggest("zzzz", ["w_bits"]) == ""


@pytest.mark.parametrize("path", sorted(str(p.relative_to(ROOT)) for p in (ROOT / "cfg").rglob("*.yaml")))
def test_shipped_cfgs_parse(path):
    """Every cfg the repo ships (demo, bench, COCO templates) is valid: keys known to gor_det and Ultralytics,
    values in range."""
    from ultralytics.cfg import DEFAULT_CFG_DICT

    run = load_run_cfg(ROOT / path, None, list(DEFAULT_CFG_DICT))
    assert run.gor is not None
