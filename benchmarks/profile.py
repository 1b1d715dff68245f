"""Where a step's time goes, for the settings that miss a target.

aetk_jax: the compiled loss alone, the compiled ``value_and_grad`` and the
whole compiled step (+ Adam update), and XLA's flop count for the step (with its
loops unrolled, :meth:`JaxRunner.step_flops`; so the
achieved GFLOP/s shows whether the step is compute-bound), and the CPU
seconds it takes to compile the loss alone and its ``value_and_grad`` (to set
beside the whole step's compile time). pythae: the forward
pass (building the autograd graph), forward + backward, and the whole step
(+ ``Adam.step``). Medians over ``n`` calls after 2 warm-up calls.
"""
from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np


def _median_ms(fn: Callable[[], Any], n: int) -> float:
    for _ in range(2):
        fn()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts) * 1e3)


def profile_jax(runner: Any, n: int = 10) -> dict[str, Any]:
    import jax

    xb, key = runner.batches[0], runner.keys[0]
    variables = runner.state.variables
    coll = runner.state.collections or {}
    c0 = time.process_time()
    loss = jax.jit(runner.loss_fn).lower(variables, xb, key).compile()
    c1 = time.process_time()
    grad = jax.jit(jax.value_and_grad(lambda p, c, x, k: runner.loss_fn({**c, "params": p}, x, k)))
    grad_c = grad.lower(runner.state.params, coll, xb, key).compile()
    c2 = time.process_time()
    out: dict[str, Any] = {
        "aetk_jax_compile_cpu_s_loss": round(c1 - c0, 2),
        "aetk_jax_compile_cpu_s_value_and_grad": round(c2 - c1, 2),
        "aetk_jax_loss_ms": _median_ms(lambda: jax.block_until_ready(loss(variables, xb, key)), n),
        "aetk_jax_value_and_grad_ms": _median_ms(lambda: jax.block_until_ready(grad_c(runner.state.params, coll, xb, key)), n),
        "aetk_jax_step_ms": _median_ms(lambda: jax.block_until_ready(runner.compiled(runner.state, xb, key)), n),
    }
    flops = runner.step_flops()["flops"]  # XLA's count with the loops unrolled
    if flops:
        out["aetk_jax_step_gflop"] = round(flops / 1e9, 4)
        out["aetk_jax_achieved_gflops_per_s"] = round(flops / 1e9 / (out["aetk_jax_step_ms"] / 1e3), 2)
    return out


def profile_torch(runner: Any, n: int = 10) -> dict[str, Any]:
    xb = runner.batches[0]
    model, opt = runner.model, runner.opt

    def fwd():
        out = model({"data": xb})
        runner.sync()
        return out

    def fwd_bwd():
        opt.zero_grad()
        model({"data": xb}).loss.backward()
        runner.sync()

    def full():
        fwd_bwd()
        opt.step()
        runner.sync()

    return {
        "pythae_forward_ms": _median_ms(fwd, n),
        "pythae_forward_backward_ms": _median_ms(fwd_bwd, n),
        "pythae_step_ms": _median_ms(full, n),
    }


def explain(rec: dict[str, Any]) -> str:
    """A one-line reading of a profile."""
    parts = []
    a_step, a_vg = rec.get("aetk_jax_step_ms"), rec.get("aetk_jax_value_and_grad_ms")
    p_step, p_fb = rec.get("pythae_step_ms"), rec.get("pythae_forward_backward_ms")
    if a_step and a_vg:
        parts.append(f"aetk_jax: {100 * a_vg / a_step:.0f}% of the step is loss+gradient")
    if p_step and p_fb:
        parts.append(f"pythae: {100 * p_fb / p_step:.0f}% of the step is forward+backward")
    if rec.get("aetk_jax_compile_cpu_s_value_and_grad") is not None:
        parts.append(f"compile CPU s: loss {rec['aetk_jax_compile_cpu_s_loss']}, "
                     f"value_and_grad {rec['aetk_jax_compile_cpu_s_value_and_grad']}")
    if rec.get("aetk_jax_achieved_gflops_per_s") is not None:
        parts.append(f"aetk_jax runs at {rec['aetk_jax_achieved_gflops_per_s']} GFLOP/s "
                     f"({rec.get('aetk_jax_step_gflop')} GFLOP per step)")
    return "; ".join(parts)
