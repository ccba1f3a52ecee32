"""Ranger21 with no host synchronisation, that skips a non-finite step on the device.

The same update as `pytorch_optimizer.Ranger21` (the reference: adaptive gradient clipping,
gradient centralisation and normalisation, positive-negative momentum, stable weight decay, norm
loss, softplus denominator, linear warm-up, explore-exploit warm-down, Lookahead), with the same
state_dict layout, so a run can resume on either implementation. Two differences:

- Every scalar that depends on the gradients (the variance normaliser, the learning-rate schedule,
  the step and Lookahead counters) stays a device tensor, so `step()` never waits for the GPU.
- When any gradient is non-finite the step changes nothing: moments, counters, Lookahead weights
  and parameters keep their values bit for bit, exactly as if `step()` had not been called. The
  decision is a device flag, applied through the update's coefficients (a skipped step has zero
  learning rate, zero momentum weight and unit decay), like GradScaler skips an overflowing step.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _unit_norm(x: torch.Tensor) -> torch.Tensor:
    """The reference's unit norm: whole tensor for vectors, over dim 1 for 2-D and 3-D tensors,
    over every dim after the first for conv kernels."""
    if x.dim() <= 1:
        return torch.linalg.vector_norm(x)
    dims = 1 if x.dim() <= 3 else tuple(range(1, x.dim()))
    return torch.linalg.vector_norm(x, dim=dims, keepdim=True)


def _centralise_and_normalise(grad: torch.Tensor) -> None:
    if grad.dim() > 1:
        grad.sub_(grad.mean(dim=tuple(range(1, grad.dim())), keepdim=True))
    if grad.numel() > 2:
        grad.div_(grad.std().add_(1e-8))


class Ranger21(torch.optim.Optimizer):
    """Sync-free Ranger21; constructor arguments as `pytorch_optimizer.Ranger21`'s."""

    def __init__(self, params, num_iterations: int, lr: float = 1e-3, beta0: float = 0.9,
                 betas: tuple[float, float] = (0.9, 0.999), weight_decay: float = 1e-4,
                 num_warm_up_iterations: int | None = None,
                 num_warm_down_iterations: int | None = None, warm_down_min_lr: float = 3e-5,
                 agc_clipping_value: float = 1e-2, agc_eps: float = 1e-3,
                 lookahead_merge_time: int = 5, lookahead_blending_alpha: float = 0.5,
                 norm_loss_factor: float = 1e-4, beta_softplus: float = 50.0, eps: float = 1e-8):
        if lr < 0 or warm_down_min_lr < 0 or weight_decay < 0:
            raise ValueError("lr, warm_down_min_lr and weight_decay must be non-negative")
        # the reference's group keys too (with the values applied here), so it can load our state
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "weight_decay": weight_decay,
                                  "eps": eps, "weight_decouple": True, "fixed_decay": False,
                                  "foreach": None})
        self.beta0, self.agc_clip, self.agc_eps = beta0, agc_clipping_value, agc_eps
        self.merge_time, self.blend = lookahead_merge_time, lookahead_blending_alpha
        self.norm_loss_factor, self.beta_softplus = norm_loss_factor, beta_softplus
        self.starting_lr, self.min_lr = lr, warm_down_min_lr
        if num_warm_up_iterations is None:  # the reference's rule: 2 / (1 - beta2), capped
            num_warm_up_iterations = math.ceil(2.0 / (1.0 - betas[1]))
            if num_warm_up_iterations / num_iterations > 0.45:
                num_warm_up_iterations = int(0.22 * num_iterations)
        if num_warm_down_iterations is None:
            num_warm_down_iterations = num_iterations - int(0.72 * num_iterations)
        self.warm_up, self.warm_down = num_warm_up_iterations, num_warm_down_iterations
        self.start_warm_down = num_iterations - num_warm_down_iterations
        # host values until the first step or load moves them onto the parameters' device
        self.lookahead_step: int | torch.Tensor = 0
        self.current_lr: float | torch.Tensor = lr

    # ---- state_dict: counters as plain numbers, as the reference writes them ------------------

    def state_dict(self) -> dict:
        state = super().state_dict()  # a checkpoint is a sync point anyway
        for group in state["param_groups"]:
            if torch.is_tensor(group.get("step")):
                group["step"] = int(group["step"])
        state["lookahead_step"] = int(self.lookahead_step)
        state["starting_lr"] = self.starting_lr
        state["current_lr"] = float(self.current_lr)
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self.lookahead_step = state_dict.get("lookahead_step", 0)
        self.starting_lr = state_dict.get("starting_lr", self.starting_lr)
        self.current_lr = state_dict.get("current_lr", self.current_lr)
        # the reference keeps keys this implementation does not use (foreach, weight_decouple...)
        for group in self.param_groups:
            group.setdefault("step", 0)

    # ---- the step -----------------------------------------------------------------------------

    def _trainable(self, group: dict) -> list[torch.Tensor]:
        params = [p for p in group["params"] if p.grad is not None]
        for p in params:
            if p.grad.is_sparse or torch.is_complex(p):
                raise ValueError("Ranger21 supports dense real parameters only")
            state = self.state[p]
            if not state:
                state.update(grad_ma=torch.zeros_like(p), variance_ma=torch.zeros_like(p),
                             lookahead_params=p.clone(), neg_grad_ma=torch.zeros_like(p),
                             max_variance_ma=torch.zeros_like(p))
        return params

    def _on_device(self, device: torch.device) -> None:
        def scalar(value, dtype):
            return torch.as_tensor(value, dtype=dtype).to(device)

        for group in self.param_groups:
            group["step"] = scalar(group.get("step", 0), torch.int64)
        self.lookahead_step = scalar(self.lookahead_step, torch.int64)
        self.current_lr = scalar(self.current_lr, torch.float64)

    def _schedule(self, group_lr: float, step: torch.Tensor) -> torch.Tensor:
        """Linear warm-up, then (from start_warm_down) a linear decay to min_lr; float64."""
        warm_up = group_lr * torch.clamp(step / max(self.warm_up, 1), max=1.0)
        lr = torch.where(step > self.warm_up, torch.full_like(warm_up, group_lr), warm_up)
        progress = torch.clamp(torch.clamp(step + 1 - self.start_warm_down, min=1)
                               / (self.warm_down + 1), max=1.0)
        down = torch.clamp(self.starting_lr - (self.starting_lr - self.min_lr) * progress,
                           min=self.min_lr)
        return torch.where(step >= self.start_warm_down, down, lr)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        groups = [(g, self._trainable(g)) for g in self.param_groups]
        groups = [(g, ps) for g, ps in groups if ps]
        if not groups:
            raise ValueError("Ranger21.step: no parameter has a gradient")
        if not torch.is_tensor(self.lookahead_step):
            self._on_device(groups[0][1][0].device)
        grads_all = [p.grad for _, ps in groups for p in ps]
        ok = torch.stack(torch._foreach_norm(grads_all)).isfinite().all()
        per_group, variance_normalised = self._second_moments(groups, ok)
        for group, params, grads, step_f, bias2 in per_group:
            self._momentum_update(group, params, grads, step_f, bias2, ok, variance_normalised)
        self._lookahead(ok, [p for _, ps in groups for p in ps])
        return loss

    def _second_moments(self, groups: list, ok: torch.Tensor) -> tuple[list, torch.Tensor]:
        """Pass 1: clip, centralise and normalise the gradients, update the second moments;
        returns each group's (group, params, grads, step, bias correction) and the variance
        normaliser that weight decay divides by."""
        variance_sum, n_params, per_group = 1.0, 0, []
        for group, params in groups:
            beta2 = group["betas"][1]
            step = group["step"] + ok.long()
            group["step"] = step
            step_f = step.clamp(min=1).double()  # a skipped first step still divides safely
            bias2 = 1 - beta2 ** step_f
            grads = [p.grad for p in params]
            for p, grad in zip(params, grads):
                max_norm = _unit_norm(p).clamp_min_(self.agc_eps).mul_(self.agc_clip)
                grad_norm = _unit_norm(grad).clamp_min_(1e-6)
                clipped = torch.where(grad_norm > max_norm, grad * (max_norm / grad_norm), grad)
                grad.copy_(torch.where(ok, clipped, 0.0))  # a skipped step moves nothing
                _centralise_and_normalise(grad)
            variances = [self.state[p]["variance_ma"] for p in params]
            torch._foreach_mul_(variances, torch.where(ok, beta2, 1.0).to(variances[0].dtype))
            torch._foreach_addcmul_(variances, grads, grads, value=1 - beta2)
            for variance in variances:
                variance_sum = variance_sum + (variance / bias2).sum()
            n_params += sum(p.numel() for p in params)
            per_group.append((group, params, grads, step_f, bias2))
        return per_group, (variance_sum / n_params).double().sqrt()

    def _momentum_update(self, group: dict, params: list, grads: list, step_f: torch.Tensor,
                         bias2: torch.Tensor, ok: torch.Tensor,
                         variance_normalised: torch.Tensor) -> None:
        """Pass 2, one group: decay, norm loss, the positive-negative momentum update."""
        beta1 = group["betas"][0]
        scheduled = self._schedule(group["lr"], step_f)
        self.current_lr = torch.where(ok, scheduled, self.current_lr)
        lr = torch.where(ok, scheduled, 0.0)
        step_size = (lr / (1 - beta1 ** step_f)).to(params[0].dtype)
        if group["weight_decay"]:
            decay = 1 - group["weight_decay"] * lr * (1 / variance_normalised)
            torch._foreach_mul_(params, decay.to(params[0].dtype))
        for p in params:
            correction = 2 * self.norm_loss_factor * (1 - 1 / _unit_norm(p).add_(group["eps"]))
            p.mul_(1 - lr * correction)
        state = [self.state[p] for p in params]
        max_variances = [s["max_variance_ma"] for s in state]
        torch._foreach_maximum_(max_variances, [s["variance_ma"] for s in state])
        denominators = torch._foreach_sqrt(max_variances)
        torch._foreach_div_(denominators, bias2.sqrt().to(params[0].dtype))
        torch._foreach_add_(denominators, group["eps"])
        denominators = [F.softplus(d, beta=self.beta_softplus) for d in denominators]
        for grad in grads:
            _centralise_and_normalise(grad)
        # the two momentum buffers swap roles every step (odd: grad_ma is the current one)
        odd = step_f.long() % 2 == 1
        weight = torch.where(ok, 1 - beta1 ** 2, 0.0).to(params[0].dtype)
        zero = torch.zeros_like(weight)
        for s, grad in zip(state, grads):
            s["grad_ma"].lerp_(grad, torch.where(odd, weight, zero))
            s["neg_grad_ma"].lerp_(grad, torch.where(odd, zero, weight))
        current = torch.where(odd, 1 + self.beta0, -self.beta0).to(params[0].dtype)
        other = torch.where(odd, -self.beta0, 1 + self.beta0).to(params[0].dtype)
        momentum = torch._foreach_mul([s["grad_ma"] for s in state], current)
        torch._foreach_add_(momentum, torch._foreach_mul([s["neg_grad_ma"] for s in state],
                                                         other))
        torch._foreach_mul_(momentum, 1 / math.sqrt((1 + self.beta0) ** 2 + self.beta0 ** 2))
        update = torch._foreach_div(momentum, denominators)
        torch._foreach_mul_(update, -step_size)
        torch._foreach_add_(params, update)

    def _lookahead(self, ok: torch.Tensor, params: list[torch.Tensor]) -> None:
        """Every merge_time applied steps, blend fast weights towards the slow ones and re-anchor."""
        counted = self.lookahead_step + ok.long()
        merge = counted >= self.merge_time
        self.lookahead_step = torch.where(merge, torch.zeros_like(counted), counted)
        dtype = params[0].dtype
        blend = torch.where(merge, 1 - self.blend, 0.0).to(dtype)
        anchor = merge.to(dtype)  # lerp by exactly 1 copies, by exactly 0 keeps
        for p in params:
            slow = self.state[p]["lookahead_params"]
            p.lerp_(slow, blend)
            slow.lerp_(p, anchor)
