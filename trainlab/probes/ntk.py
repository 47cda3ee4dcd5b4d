"""The empirical neural tangent kernel on a batch, its alignment with the labels, and its drift (lazy vs rich).

The empirical NTK of a network ``f(x; θ)`` on inputs ``x_1..x_N`` is the Gram matrix of its parameter Jacobians
(Jacot et al. 2018, "Neural tangent kernel")::

    K_ij = Σ_c <∂f_c(x_i)/∂θ, ∂f_c(x_j)/∂θ>                (output_index=None: trace over the outputs)
    K_ij = <∂(Σ_c f_c(x_i))/∂θ, ∂(Σ_c f_c(x_j))/∂θ>         (output_index="sum")
    K_ij = <∂f_c(x_i)/∂θ, ∂f_c(x_j)/∂θ>                     (output_index=c, index into the flattened output)

In units of output² per parameter² (the kernel of a linear model ``Wx + b`` is ``C·(x_iᵀx_j + 1)``). Outputs
with more than one axis (language-model logits ``(time, vocab)``) are flattened per example.

In the lazy regime (Chizat et al. 2019, "On lazy training"; large output scale α) the kernel barely moves
from initialisation and the network behaves like its linearisation; in the rich (feature-learning) regime it
moves and aligns with the task. Grokking has been described as a lazy-to-rich transition (Kumar et al. 2024).
Two scalars summarise this:

- :func:`kernel_alignment` ``A(K, YYᵀ) = <K, YYᵀ>_F / (||K||_F ||YYᵀ||_F)`` (Cristianini et al. 2002, "On
  kernel-target alignment"; centred version: Cortes et al. 2012), in [-1, 1] (in [0, 1] for PSD kernels),
  1 for a kernel proportional to ``YYᵀ``. Rises as features are learnt (Baratin et al. 2021).
- :func:`kernel_distance` ``1 - <K0, K1>_F / (||K0||_F ||K1||_F)`` (Fort et al. 2020, "Deep learning versus
  kernel learning"), 0 for kernels equal up to scale; its growth from the initial kernel ``K0`` measures how
  far from lazy the training is.

:func:`ntk_at` computes the kernel at other parameters (e.g. a snapshot of the initial state) without touching
the model, through ``torch.func.functional_call``.

Cost (the trainer should budget this; ``C`` = outputs per example, flattened): the Jacobian is computed with
``torch.func`` (``vmap`` over examples of ``jacrev``): 1 batched forward and ``C`` vector-Jacobian products
over the batch (≈ ``C`` backward passes) for the trace; 1 forward and 1 backward for ``"sum"`` or an index.
When ``N·C·n_params`` exceeds ``max_jacobian_elements`` the outputs are taken in chunks, each repeating the
forward. Then ``O(N²·C·n_params)`` for the Gram matrix. Memory ``min(N·C·n_params, max_jacobian_elements)``.
The model runs in eval mode (dropout off), train/eval flags are restored, and no ``.grad`` is written.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, jacrev, vmap

from trainlab.probes.hessian import parameter_names, probe_mode

OutputIndex = int | str | None


def empirical_ntk(model: nn.Module, inputs: Tensor, params: Iterable[Tensor | str] | None = None,
                  output_index: OutputIndex = None, *, state: Mapping[str, Tensor] | None = None,
                  max_jacobian_elements: int = 2**25) -> Tensor:
    """The empirical NTK ``K`` (N, N) of ``model`` on ``inputs`` (N examples); see the module doc for the formula.

    Args:
        model: any module mapping a batch ``(N, ...)`` to outputs ``(N, ...)``.
        inputs: the batch (a fixed probe batch, so kernels at different steps compare).
        params: parameters (tensors or names) to differentiate (default: all with ``requires_grad``).
        output_index: ``None`` (trace over outputs), ``"sum"`` (kernel of the summed output) or an ``int``
            index into each example's flattened output.
        state: parameter and buffer values to use instead of the model's (a ``state_dict``-like mapping;
            missing names keep the model's values); see :func:`ntk_at`.
        max_jacobian_elements: largest Jacobian block held at once; beyond it outputs are chunked.

    Returns:
        ``K`` as a symmetric PSD (N, N) tensor in the parameters' dtype, detached.

    Cost: 1 forward and ``C`` VJPs over the batch (trace), or 1 forward and 1 VJP (``"sum"``, index);
    more forwards when chunked; Gram ``O(N²·C·n_params)``.
    """
    names = parameter_names(model, params)
    own = dict(model.named_parameters())
    state = state or {}
    values = {n: state.get(n, own[n]).detach().to(own[n].device, own[n].dtype) for n in names}
    buffers = {n: state.get(n, b).detach().to(b.device, b.dtype) for n, b in model.named_buffers()}
    n_params = sum(v.numel() for v in values.values())
    n = inputs.shape[0]

    # no_grad: torch.func's transforms ignore it, but it keeps parameters left out of ``params`` from recording a
    # graph through the Jacobian.
    with probe_mode(model), torch.no_grad():
        def output(p: dict[str, Tensor], x: Tensor) -> Tensor:
            return functional_call(model, (p, buffers), (x.unsqueeze(0),)).reshape(-1)

        bounds: list[tuple[int, int] | None]  # output rows per Jacobian chunk; None: the one selected output
        if output_index is None:
            n_outputs = output(values, inputs[0]).numel()
            chunk = max(1, min(n_outputs, max_jacobian_elements // max(1, n * n_params)))
            bounds = [(lo, min(lo + chunk, n_outputs)) for lo in range(0, n_outputs, chunk)]
        elif output_index == "sum" or isinstance(output_index, int):
            bounds = [None]
        else:
            raise ValueError(f"output_index must be None, 'sum' or an int, got {output_index!r}")

        kernel = torch.zeros(n, n, dtype=next(iter(values.values())).dtype, device=inputs.device)
        for bound in bounds:
            def select(p: dict[str, Tensor], x: Tensor, bound: tuple[int, int] | None = bound) -> Tensor:
                out = output(p, x)
                if bound is not None:
                    return out[bound[0]:bound[1]]
                return out[output_index] if isinstance(output_index, int) else out.sum()  # else: "sum"

            jac = vmap(jacrev(select), in_dims=(None, 0))(values, inputs)  # name -> (N, [c,] *shape)
            for name in names:
                j = jac[name].reshape(n, -1)  # (N, c·numel): the output axis folds into the inner product
                kernel += j @ j.T
            del jac
    return kernel.detach()


def ntk_at(model: nn.Module, state_dict0: Mapping[str, Tensor], inputs: Tensor,
           params: Iterable[Tensor | str] | None = None, output_index: OutputIndex = None,
           **kwargs: int) -> Tensor:
    """The empirical NTK at the parameters of ``state_dict0`` (e.g. the initial ones), leaving ``model`` as is.

    ``state_dict0`` must be a *copy* (``{k: v.detach().clone() for k, v in model.state_dict().items()}`` at
    step 0): ``model.state_dict()`` shares storage with the live parameters. Equivalent to
    ``empirical_ntk(model, inputs, params, output_index, state=state_dict0)``; same cost. On a fixed probe
    batch the initial kernel needs computing only once: cache it rather than calling this at every probe.
    """
    return empirical_ntk(model, inputs, params, output_index, state=state_dict0, **kwargs)


def _centre(matrix: Tensor) -> Tensor:
    return matrix - matrix.mean(0, keepdim=True) - matrix.mean(1, keepdim=True) + matrix.mean()


def _cosine(a: Tensor, b: Tensor) -> float:
    a, b = a.double(), b.double()
    norms = float(a.norm() * b.norm())
    return float((a * b).sum()) / norms if norms > 0 else math.nan


def label_matrix(targets: Tensor, num_classes: int | None = None) -> Tensor:
    """``Y`` (N, d) from targets: integer class labels of any shape are one-hot encoded and flattened per example
    (so language-model targets ``(N, T)`` match the NTK's flattened outputs), float targets are used as they are
    (a vector becomes one column)."""
    if not targets.is_floating_point():
        y = F.one_hot(targets.long(), num_classes or int(targets.max()) + 1)
        return y.reshape(targets.shape[0], -1).double()
    return (targets.unsqueeze(-1) if targets.dim() == 1 else targets.reshape(targets.shape[0], -1)).double()


def kernel_alignment(kernel: Tensor, targets: Tensor, *, centered: bool = False,
                     num_classes: int | None = None) -> float:
    """Kernel-target alignment ``<K, YYᵀ>_F / (||K||_F ||YYᵀ||_F)`` (Cristianini et al. 2002).

    ``targets`` are class labels (one-hot encoded, ``num_classes`` default ``max + 1``) or a float matrix ``Y``
    (N, d) / vector (N,). ``centered=True`` centres both kernels, ``HKH`` with ``H = I - 11ᵀ/N`` (Cortes et al.
    2012): it removes the constant part that one-hot and mean offsets contribute, so a kernel that only sees
    the mean gets 0. Dimensionless, 1 for ``K ∝ YYᵀ``; NaN if either kernel is zero. Cost: O(N²·d).
    """
    y = label_matrix(targets, num_classes).to(kernel.device)
    target_kernel = y @ y.T
    k = kernel.double()
    if centered:
        k, target_kernel = _centre(k), _centre(target_kernel)
    return _cosine(k, target_kernel)


def kernel_distance(kernel0: Tensor, kernel1: Tensor) -> float:
    """``1 - <K0, K1>_F / (||K0||_F ||K1||_F)`` (Fort et al. 2020): 0 when the kernels agree up to scale, 1 when
    orthogonal. With ``K0`` the kernel at initialisation, it measures the drift away from lazy training.
    Dimensionless; NaN if either kernel is zero. Cost: O(N²)."""
    if kernel0.shape != kernel1.shape:
        raise ValueError(f"kernels differ in shape: {tuple(kernel0.shape)} vs {tuple(kernel1.shape)}")
    return 1.0 - _cosine(kernel0, kernel1)
