#!/usr/bin/env python
"""How large are the task and the distillation gradients on the features they share? (what ``gor_grad`` balances)

    python research/grad_probe.py --student research/out/synthetic/qat_w8a8/seed0/weights/last.pt \\
        --teacher research/out/synthetic/teacher_v8s/seed0/weights/best.pt --batches 6

On ``--batches`` augmented training batches (train-mode BN, fake quant active for a QAT student), with the benchmark's
KD terms (``gor.distill`` defaults, adapters identity-initialised when the student has none), prints per batch:
``L_task``, ``L_kd`` and their ratio; ``n_t = ||dL_task/dF||``, ``n_k = ||dL_kd/dF||`` on the Detect-head inputs F and
their ratio; the cosine between the two gradients; and each KD term's gradient norm on F. A second table is what
``gor`` measures: on the parameters of the layers feeding the Detect head and of the head, the norms of the
two gradients and, for every ordered pair of distinct batches (A, B), the transfers ``ρ_t = <g_t^B, g_t^A> / |g_t^A|``
and ``ρ_k = <g_t^B, g_k^A> / |g_k^A|`` (how much a unit step along each term's batch-A gradient lowers batch B's task
loss), averaged over the pairs, and the batch-consistent part of each gradient, ``|E g| = sqrt(mean <g^A, g^B>)``
(the norm of the expected gradient: the per-batch noise cancels in the dot product of independent batches). With
``--holdout DATA`` (or ``--holdout-seed K``: a fresh split of the bench preset) the same transfers are also measured
to the task loss of un-augmented batches of that val split (images the student never trained on; eval-mode BN, the
arithmetic the val mAP is scored with): ``ρ_j^H = <g_t^H, g_j^A> / |g_j^A|`` averaged over training batches A and
held-out batches H, i.e. the ratio a lookahead on held-out images would use. With ``--adam W_KD`` a last table looks at
the two gradients as AdamW sees them: on every trainable parameter of the student (adapters and GoR scalars left
out), each term's gradient divided elementwise by ``sqrt(v)``, ``v`` = the mean over the batches of the squared total
gradient ``(g_t + W_KD g_k)^2`` (what Adam's second moment estimates when training at ``w_kd / w_task = W_KD``; Adam's
update is invariant to the loss scale, so only such preconditioned shares decide how much each term moves the
weights), and the ratio at which equal preconditioned norms (per batch, and of the batch-consistent parts) would settle.
Nothing is trained.
"""

from __future__ import annotations

import argparse
import platform
import sys
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gor_det  # noqa: E402,F401


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--student", required=True, help="student checkpoint (.pt, FP or QAT)")
    ap.add_argument("--teacher", required=True, help="teacher checkpoint (.pt)")
    ap.add_argument("--data", default="datasets/synth_bench/data.yaml")
    ap.add_argument("--imgsz", type=int, default=192)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--batches", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--holdout", help="a dataset yaml whose val images give held-out batches")
    ap.add_argument("--holdout-seed", type=int, help="held-out batches from a fresh split of the bench preset with this "
                    "seed (bench/teacher_ensemble.py's; instead of --holdout)")
    ap.add_argument("--holdout-batches", type=int, default=4)
    ap.add_argument("--adam", type=float, metavar="W_KD", help="also the AdamW-preconditioned table, with Adam's second "
                    "moment estimated for training at w_kd / w_task = W_KD")
    a = ap.parse_args()
    import torch
    from ultralytics.cfg import get_cfg
    from ultralytics.data import build_dataloader, build_yolo_dataset
    from ultralytics.data.utils import check_det_dataset
    from ultralytics.utils import DEFAULT_CFG_DICT, IterableSimpleNamespace
    from ultralytics.utils.torch_utils import init_seeds

    from gor_det.balance import flat_gradient, gradient_norm
    from gor_det.config import parse_gor
    from gor_det.distill import KD_KEYS
    from gor_det.engine.criterion import attach_kd_criterion, build_kd_modules, head_region_parameters
    from gor_det.engine.evaluate import load_model
    from gor_det.engine.teachers import TeacherSet

    torch.set_num_threads(a.threads)
    init_seeds(0)  # torch, numpy and random: the same augmented batches on every run
    student = load_model(a.student)
    student.args = IterableSimpleNamespace(**DEFAULT_CFG_DICT)  # the loss gains Ultralytics trains with
    for name, p in student.named_parameters():
        p.requires_grad_(".dfl." not in name)  # load_model freezes everything; DFL's fixed conv stays frozen
    gor = parse_gor({"teachers": [a.teacher], "balance": {"method": "fixed"}})
    teachers = TeacherSet(gor.teachers, student.names)
    if not hasattr(student, "kd"):  # a student trained without KD: identity-initialised adapters
        student.kd = build_kd_modules(student, teachers, gor.balance)
    crit = attach_kd_criterion(student, teachers, gor)

    d = check_det_dataset(a.data)
    cfg = get_cfg(overrides={"imgsz": a.imgsz, "batch": a.batch, "data": a.data, "workers": 0})
    loader = build_dataloader(build_yolo_dataset(cfg, d["train"], a.batch, d, mode="train", rect=False, stride=32),
                              a.batch, workers=0, shuffle=True)
    student.train()
    params = [p for p in head_region_parameters(student) if p.requires_grad]
    flat = []  # (g_t, g_k) on params, per batch
    full = []  # (g_t, g_k) on every trainable student parameter, per batch (--adam)
    if a.adam is not None:
        every = [p for n, p in student.named_parameters() if p.requires_grad and not n.startswith("kd.")]
        # params are among them: one backward per term over all of them gives both (params' part by this mask)
        in_params = {id(p) for p in params}
        params_mask = torch.cat([torch.full((p.numel(),), id(p) in in_params) for p in every])
    lines = ["| batch | L_task | L_kd | L_task / L_kd | n_t | n_k | n_t / n_k | cos(g_t, g_k) | "
             + " | ".join(f"n({k})" for k in KD_KEYS) + " |", "|" + "---|" * (8 + len(KD_KEYS))]
    for i, b in enumerate(loader):
        if i >= a.batches:
            break
        b["img"] = b["img"].float() / 255
        preds = student(b["img"])
        task = crit.base(preds, b)[0].sum() / b["img"].shape[0]
        s_out, kd = crit.kd_terms(preds, b)
        feats = s_out.feats
        g_t, g_k = flat_gradient(task, feats), flat_gradient(kd["kd"], feats)
        cos = float(g_t @ g_k / (g_t.norm() * g_k.norm()))
        if a.adam is None:
            flat.append((flat_gradient(task, params).double(), flat_gradient(kd["kd"], params).double()))
        else:
            full.append((flat_gradient(task, every).double(), flat_gradient(kd["kd"], every).double()))
            flat.append((full[-1][0][params_mask], full[-1][1][params_mask]))
        terms = " | ".join(f"{float(gradient_norm(kd[k], feats)):.4f}" for k in KD_KEYS)
        lt, lk, nt, nk = float(task.detach()), float(kd["kd"].detach()), float(g_t.norm()), float(g_k.norm())
        lines.append(f"| {i} | {lt:.3f} | {lk:.3f} | {lt / lk:.2f} | {nt:.4f} | {nk:.4f} | {nt / nk:.2f} | {cos:.3f} | "
                     f"{terms} |")
    # every dot product once: g_tt[b, a] = <g_t^B, g_t^A>, g_tk[b, a] = <g_t^B, g_k^A>, g_kk[b, a] = <g_k^B, g_k^A>
    task_g, kd_g = torch.stack([g[0] for g in flat]), torch.stack([g[1] for g in flat])  # (batches, parameters)
    g_tt, g_tk, g_kk = task_g @ task_g.T, task_g @ kd_g.T, kd_g @ kd_g.T
    norm_t, norm_k = g_tt.diagonal().sqrt(), g_kk.diagonal().sqrt()
    pairs = ~torch.eye(len(flat), dtype=torch.bool)  # the ordered pairs (B, A) of distinct batches
    rho_t, rho_k = float((g_tt / norm_t)[pairs].mean()), float((g_tk / norm_k)[pairs].mean())  # column A / |g^A|
    n_t, n_k = float(norm_t.mean()), float(norm_k.mean())
    # the batch-consistent part of each gradient: E<g^A, g^B> = |E g|^2 for independent batches A, B
    sig_t, sig_k = consistent_norm(g_tt), consistent_norm(g_kk)
    lines += ["", f"On the {sum(p.numel() for p in params)} parameters of the layers feeding the Detect head and of the "
              f"head ({int(pairs.sum())} ordered batch pairs):", "",
              "| mean n_t | mean n_k | n_t / n_k | rho_t | rho_k | a = rho_k / rho_t | gor's w_kd / w_task |",
              "|---|---|---|---|---|---|---|",
              f"| {n_t:.4f} | {n_k:.4f} | {n_t / n_k:.2f} | {rho_t:.4f} | {rho_k:.4f} | {rho_k / rho_t:.2f} | "
              f"{rho_k / rho_t * n_t / n_k:.2f} |",
              "", "The batch-consistent part of each gradient, `|E g| = sqrt(mean <g^A, g^B>)` over the same pairs "
              "(`|E g| / mean |g|`: the share of a batch's gradient norm that other batches share; the last column is "
              "the ratio at which `gor_grad`'s game played on `|E g|` instead of `|g|` would settle):", "",
              "| sig_t | sig_k | sig_t / mean n_t | sig_k / mean n_k | w_kd / w_task = sig_t / sig_k |",
              "|---|---|---|---|---|",
              f"| {sig_t:.4f} | {sig_k:.4f} | {sig_t / n_t:.2f} | {sig_k / n_k:.2f} | {sig_t / max(sig_k, 1e-12):.2f} |"]
    if a.holdout_seed is not None:
        from bench.teacher_ensemble import fresh_split  # the repository root is on sys.path

        a.holdout = str(fresh_split(a.holdout_seed))
    if a.holdout:
        dh = check_det_dataset(a.holdout)
        h_loader = build_dataloader(build_yolo_dataset(cfg, dh["val"], a.batch, dh, mode="val", rect=False, stride=32),
                                    a.batch, workers=0, shuffle=False)
        student.eval()
        g_h = []
        for i, b in enumerate(h_loader):
            if i >= a.holdout_batches:
                break
            b["img"] = b["img"].float() / 255
            task = crit.base(student(b["img"]), b)[0].sum() / b["img"].shape[0]
            g_h.append(flat_gradient(task, params).double())
        held = torch.stack(g_h)  # (held-out batches, parameters)
        rho_th, rho_kh = float((held @ task_g.T / norm_t).mean()), float((held @ kd_g.T / norm_k).mean())
        lines += ["", f"Transfer to the task loss of {len(g_h)} held-out un-augmented batches of {a.holdout} "
                  f"(val split, eval-mode BN; {len(g_h) * len(flat)} pairs):", "",
                  "| rho_t^H | rho_k^H | a^H = rho_k^H / rho_t^H | lookahead's w_kd / w_task with a^H |", "|---|---|---|---|",
                  f"| {rho_th:.4f} | {rho_kh:.4f} | {rho_kh / rho_th:.2f} | {rho_kh / rho_th * n_t / n_k:.2f} |"]
    if a.adam is not None:
        lines += adam_table(full, a.adam, sum(p.numel() for p in every))
    lines += ["", f"Command: `python research/grad_probe.py {' '.join(sys.argv[1:])}`  ",
              f"Machine: {platform.machine()}, {a.threads} threads; batch {a.batch} at {a.imgsz} px  ",
              f"Date: {date.today()}", ""]
    print("\n".join(lines))
    out = Path("research/out/grad_probe.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))


def consistent_norm(gram) -> float:
    """``|E g| = sqrt(mean over distinct batches A != B of <g^A, g^B>)`` from the Gram matrix ``gram`` (batches x
    batches) of one term's per-batch gradients: the norm of the batch-consistent part (per-batch noise cancels in the
    dot products of independent batches; 0 if the mean is negative)."""
    import torch

    pairs = ~torch.eye(gram.shape[0], dtype=torch.bool)
    return max(float(gram[pairs].mean()), 0.0) ** 0.5


def adam_shares(full: list, w_kd: float) -> tuple[float, float, float, float]:
    """The two gradients of each batch (``full``: (g_t, g_k) flat float64 over the student's trainable parameters)
    preconditioned by Adam's ``1 / sqrt(v)``, ``v = mean_batches (g_t + w_kd g_k)^2`` (eps 1e-16 so that parameters no
    batch moves stay 0): ``(p_t, p_k, sig_t, sig_k)``, the mean per-batch norms and the batch-consistent norms
    (:func:`consistent_norm`). Equal weighted shares put w_kd / w_task at ``p_t / p_k`` (or ``sig_t / sig_k``)."""
    import torch

    t, k = torch.stack([g[0] for g in full]), torch.stack([g[1] for g in full])  # (batches, parameters)
    inv = ((t + w_kd * k).pow(2).mean(0) + 1e-16).rsqrt()
    pt, pk = t * inv, k * inv
    return (float(pt.norm(dim=1).mean()), float(pk.norm(dim=1).mean()), consistent_norm(pt @ pt.T),
            consistent_norm(pk @ pk.T))


def adam_table(full: list, w_kd: float, n_params: int) -> list[str]:
    """Markdown lines of :func:`adam_shares`."""
    p_t, p_k, sig_t, sig_k = adam_shares(full, w_kd)
    return ["", f"As AdamW sees them: on the student's {n_params} trainable parameters, each gradient divided by "
            f"sqrt(v), v = mean over the {len(full)} batches of (g_t + {w_kd:g} g_k)^2; `p` = mean per-batch norm, "
            "`sig` = norm of the batch-consistent part; w_kd / w_task where the weighted preconditioned norms are "
            "equal:", "",
            "| p_t | p_k | w_kd / w_task = p_t / p_k | sig_t | sig_k | w_kd / w_task = sig_t / sig_k |",
            "|---|---|---|---|---|---|",
            f"| {p_t:.1f} | {p_k:.1f} | {p_t / p_k:.2f} | {sig_t:.1f} | {sig_k:.1f} | {sig_t / max(sig_k, 1e-12):.2f} |"]

if __name__ == "__main__":
    main()
