"""What a balancer may ask about a batch: the gradients of its two losses in the head region, computed only when asked.

The KD criterion builds one :class:`GradientProbe` per training batch (never in validation) and hands it to balancers
that declare ``wants_probe``. Gradients are taken with ``torch.autograd.grad`` on the graph the training backward
will use (kept with ``retain_graph``; nothing is accumulated in ``.grad``), at the AMP GradScaler's scale when one is
active, and returned as flat float32 vectors on the device (no host sync).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

WHERE = ("head", "features")


def flat_gradient(loss: torch.Tensor, wrt: list[torch.Tensor], scale: torch.Tensor | None = None) -> torch.Tensor:
    """``d loss / d wrt`` flattened into one detached float32 vector (zeros where ``loss`` does not reach a tensor).

    ``scale`` (a float32 scalar tensor, e.g. the AMP GradScaler's, a power of two): the backward runs on
    ``loss * scale`` and the gradient is divided by it in float32, so fp16 gradients under autocast do not flush to
    zero (what the training backward does through the GradScaler); None: no scaling. The graph is kept
    (``retain_graph``) for the training backward that follows; nothing is accumulated in ``.grad``.
    """
    if not loss.requires_grad:
        return torch.cat([w.new_zeros(w.numel(), dtype=torch.float32) for w in wrt])
    if scale is not None:
        loss = loss * scale
    grads = torch.autograd.grad(loss, wrt, retain_graph=True, allow_unused=True, materialize_grads=True)
    flat = torch.cat([g.detach().float().flatten() for g in grads])
    return flat if scale is None else flat / scale


def gradient_norm(loss: torch.Tensor, wrt: list[torch.Tensor], scale: torch.Tensor | None = None) -> torch.Tensor:
    """``||d loss / d wrt||_2`` over all tensors of ``wrt`` (detached float32 scalar; 0 if ``loss`` does not reach
    them), at the loss scale ``scale`` (see :func:`flat_gradient`)."""
    return flat_gradient(loss, wrt, scale).norm()


class GradientProbe:
    """The batch's ``task`` (``L_t``, Ultralytics' box + cls + dfl per image) and ``kd`` (``L_k``) losses, and their
    gradients on demand.

    Args:
        task, kd: the two scalar losses (graph attached).
        features: the Detect-head inputs P3-P5 of the student, ``[(B, C_l, H_l, W_l)]``.
        head_params: the parameters of the layers producing those inputs and of the Detect head (the head region:
            every KD term reaches them, and one backward through it is cheap).
        scale: the AMP loss scale (a float32 scalar tensor) or None.
        halves: a callable giving ``[(task, kd)]`` of the batch's two halves (each on its own images, same weights),
            or None for a batch of one image.
    """

    def __init__(self, task: torch.Tensor, kd: torch.Tensor, features: list[torch.Tensor],
                 head_params: list[torch.Tensor], scale: torch.Tensor | None = None,
                 halves: Callable[[], list[tuple[torch.Tensor, torch.Tensor]] | None] | None = None):
        self.task, self.kd, self.scale = task, kd, scale
        self._features, self._head_params, self._halves = features, head_params, halves

    def gradient(self, loss: torch.Tensor, where: str = "head") -> torch.Tensor:
        """``d loss / d (where)`` as one flat float32 vector: ``head``, the trainable parameters of the head region;
        ``features``, the Detect-head inputs."""
        if where == "features":
            wrt = [f for f in self._features if f.requires_grad]
        elif where == "head":
            wrt = [p for p in self._head_params if p.requires_grad]  # the DFL conv is frozen
            if not wrt:
                raise ValueError("the balancer measures gradients in the Detect head and the layers feeding it, but "
                                 "'freeze=' froze all of them; freeze fewer layers or use gor.balance.method=fixed")
        else:
            raise ValueError(f"where={where!r} is not one of {', '.join(WHERE)}")
        return flat_gradient(loss, wrt, self.scale)

    def halves(self) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        """``[(task, kd)]`` of the first and second half of the batch, or None (one image, or not available)."""
        return self._halves() if self._halves is not None else None
