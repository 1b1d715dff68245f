"""aetk_jax side: the models of a :class:`~benchmarks.config.Setting`, their compiled
training step and their compiled epoch.

Networks, for a setting ``s`` (the same as ``torch_side``):

* encoder: ``aet.JointGaussianLogEncoder(aet.MLP(s.hidden, final_activation=relu), d)``
  (heads ``mu`` and ``logsigma``; pythae's head is log σ² = 2·logsigma);
* decoder: ``aet.BernoulliDecoder(aet.MLP(reversed(s.hidden), final_activation=relu), n_in)``;
* RHVAE metric: ``aet.rhvae.MetricNetwork(aet.MLP(s.hidden, final_activation=relu), d)``.

The step is ``aet.train.make_trainer(model, loss, optax.adam(lr)).step`` under
``jax.jit`` — what ``aet.train.fit`` compiles into its epoch — and the epoch is
``jax.jit(aet.train.make_epoch(trainer.step, batch_size))`` followed by the
trainer's ``end_epoch`` (RHVAE's metric update), exactly ``fit``'s inner loop.
Compile time is ``lower`` (tracing) plus ``compile`` (XLA) of that function,
measured once per setting; steps and epochs call the compiled executable and
wait for its outputs with ``jax.block_until_ready``. ``fit``'s own compile cost,
recompiles included, is measured by running ``aet.train.fit`` itself
(:meth:`JaxRunner.fit_compile`): the excess of its first two epochs over two
steady ones.

The FLOP floor of a step (:func:`floor`): XLA's flop count of the step
(``cost_analysis``, compiled with every ``lax.scan`` unrolled, :func:`unrolled_flops`:
the cost analysis counts a loop body once) divided by this machine's measured rate for the network's
own matrix products (:func:`matmul_rate`: every dense layer's forward product
and the two backward ones, at the setting's batch size, timed as one compiled
program). It is the time the step would take if every one of its flops ran at
the speed of its matrix products; elementwise work (exp, softplus, the
leapfrog's arithmetic) runs slower than that, so for HVAE/RHVAE it is a loose
lower bound.
"""
from __future__ import annotations

import functools
import time
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import aetk_jax as aet

from .config import Setting, aetk_hyper, mmd_kernel_rho


class ModelUnavailable(RuntimeError):
    """The model (or a function the benchmark needs) is not in this aetk_jax."""


def _body(hidden: tuple[int, ...]) -> nn.Module:
    return aet.MLP(tuple(hidden), final_activation=nn.relu)


def check_available(model: str) -> None:
    """Raise :class:`ModelUnavailable` when aetk_jax lacks what ``model`` needs."""
    needs = {
        "vae": [("vae", "loss")],
        "betavae": [("vae", "loss")],
        "mmdvae": [("mmdvae", "loss"), ("mmdvae", "gaussian_kernel")],
        "hvae": [("hvae", "loss"), ("hvae", "grad_potential_energy")],
        "rhvae": [("rhvae", "loss"), ("rhvae", "MetricNetwork"), ("rhvae", "G_inv")],
    }[model]
    cls = {"vae": "VAE", "betavae": "VAE", "mmdvae": "MMDVAE", "hvae": "HVAE", "rhvae": "RHVAE"}[model]
    missing = [f"aet.{m}.{f}" for m, f in needs if not hasattr(getattr(aet, m, None), f)]
    if not hasattr(aet, cls):
        missing.insert(0, f"aet.{cls}")
    if missing:
        raise ModelUnavailable(f"model not available in this aetk_jax: missing {', '.join(missing)}")


def grad_potential_first_order(model: nn.Module, variables: Any, x: jax.Array, z: jax.Array) -> jax.Array:
    """∇U(z) treated as a constant: ``stop_gradient`` of ``aet.hvae.grad_potential_energy``.

    pythae's HVAE takes ∇U with ``torch.autograd.grad`` without ``create_graph``, so no
    gradient flows through it into the decoder (or back to z); passing this function as
    ``potential_grad`` makes aetk_jax's HVAE do the same amount of differentiation.
    """
    return jax.lax.stop_gradient(aet.hvae.grad_potential_energy(model, variables, x, z))


def build(s: Setting, **hyper_override: Any) -> tuple[nn.Module, Callable[..., Any], dict[str, Any]]:
    """``(model, loss_fn, hyper)`` with ``loss_fn(variables, x, key)`` for setting ``s``."""
    check_available(s.model)
    enc = aet.JointGaussianLogEncoder(_body(s.hidden), s.latent_dim)
    dec = aet.BernoulliDecoder(_body(s.hidden[::-1]), s.input_dim)
    hp = aetk_hyper(s, **hyper_override)
    if s.model in ("vae", "betavae"):
        model = aet.VAE(enc, dec)
        loss = aet.vae.loss
    elif s.model == "mmdvae":
        model = aet.MMDVAE(enc, dec)
        hp = {**hp, "kernel": functools.partial(aet.mmdvae.gaussian_kernel, rho=mmd_kernel_rho(s))}
        loss = aet.mmdvae.loss
    elif s.model == "hvae":
        model = aet.HVAE(enc, dec)
        loss = aet.hvae.loss
        if s.matched_gradient and "potential_grad" not in hyper_override:
            hp = {**hp, "potential_grad": grad_potential_first_order}
    else:
        metric = aet.rhvae.MetricNetwork(_body(s.hidden), s.latent_dim)
        model = aet.RHVAE(enc, dec, metric, s.centroids, s.T, s.metric_lam)
        loss = aet.rhvae.loss
    return model, functools.partial(loss, model, **hp), hp


def init_variables(model: nn.Module, s: Setting, x: np.ndarray, key: jax.Array) -> Any:
    """``model.init`` on one batch; an RHVAE also gets its metric from the first ``n_centroids`` examples."""
    variables = jax.jit(model.init)(key, jnp.asarray(x[: s.batch_size]))  # one compile, not one per op
    if s.model == "rhvae" and hasattr(aet.rhvae, "update_metric"):
        xc = jnp.asarray(x[: s.centroids]) if len(x) >= s.centroids else jnp.asarray(np.resize(x, (s.centroids, x.shape[1])))
        variables = aet.rhvae.update_metric(model, variables, xc)
    return variables


def n_params(variables: Any) -> int:
    return int(sum(np.size(a) for a in jax.tree_util.tree_leaves(variables.get("params", variables))))


def _memory_stats(compiled: Any) -> dict[str, Optional[int]]:
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - not every backend reports it
        return {}
    if m is None:
        return {}
    keys = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes", "temp_size_in_bytes",
            "generated_code_size_in_bytes")
    out = {k: int(getattr(m, k, 0) or 0) for k in keys}
    out["total_bytes"] = out["argument_size_in_bytes"] + out["output_size_in_bytes"] - out["alias_size_in_bytes"] + out["temp_size_in_bytes"]
    return out


class JaxRunner:
    """Drives one aetk_jax model: ``compile()`` then ``step()`` (synchronous)."""

    lib = "aetk_jax"

    def __init__(self, s: Setting, x: np.ndarray, *, seed: int = 0, n_batches: int = 16, **hyper_override: Any):
        self.s = s
        self.model, self.loss_fn, self.hyper = build(s, **hyper_override)
        self.optimizer = optax.adam(s.learning_rate)
        key = jax.random.key(seed)
        init_key, self.run_key = jax.random.split(key)
        self.x = x
        self.variables = init_variables(self.model, s, x, init_key)
        self.trainer = aet.train.make_trainer(self.model, self.loss_fn, self.optimizer)
        self.state = self.trainer.init(self.variables)
        n = min(n_batches, max(1, len(x) // s.batch_size))
        if len(x) < s.batch_size:
            raise ValueError(f"need at least {s.batch_size} examples, got {len(x)}")
        self.batches = [jax.device_put(x[i * s.batch_size : (i + 1) * s.batch_size]) for i in range(n)]
        self.keys = list(jax.random.split(self.run_key, 64))
        self.i = 0
        self.compiled: Any = None
        self.metrics: Any = None
        self._flops: Optional[dict[str, Any]] = None  # step_flops' cache

    def compile(self) -> dict[str, Any]:
        """Trace, lower and compile the step; returns timings (s) and XLA's memory analysis."""
        fn = jax.jit(self.trainer.step)
        c0, t0 = time.process_time(), time.perf_counter()
        lowered = fn.lower(self.state, self.batches[0], self.keys[0])
        t1 = time.perf_counter()
        self.compiled = lowered.compile()
        t2, c2 = time.perf_counter(), time.process_time()
        return {"compile_s": t2 - t0, "compile_cpu_s": c2 - c0, "trace_lower_s": t1 - t0, "xla_compile_s": t2 - t1,
                "xla_memory": _memory_stats(self.compiled)}

    def step_flops(self) -> dict[str, Any]:
        """:func:`unrolled_flops` of the training step at the first batch (cached; the rolled count
        from the step :meth:`compile` made, when it has been called)."""
        if self._flops is None:
            self._flops = unrolled_flops(self.trainer.step, self.state, self.batches[0], self.keys[0],
                                         compiled=self.compiled)
        return self._flops

    def step(self) -> None:
        i = self.i
        self.state, self.metrics = self.compiled(self.state, self.batches[i % len(self.batches)], self.keys[i % len(self.keys)])
        jax.block_until_ready((self.state, self.metrics))
        self.i += 1

    def loss_value(self) -> float:
        return float(self.metrics["loss"])

    def info(self) -> dict[str, Any]:
        dev = jax.devices()[0]
        return {"n_params": n_params(self.variables), "device": f"{dev.platform}:{getattr(dev, 'device_kind', '')}",
                "hyper": {k: (v if isinstance(v, (int, float, bool, str)) else repr(v)) for k, v in self.hyper.items()}}

    # ------------------------------------------------------------------ epoch

    def compile_epoch(self, x_epoch: np.ndarray) -> dict[str, Any]:
        """Compile ``fit``'s epoch scan (and the trainer's ``end_epoch``, which ``fit`` skips
        when it is :func:`aet.train.identity_end`, as here) for ``x_epoch``."""
        self.x_epoch = jax.device_put(x_epoch)
        epoch = jax.jit(aet.train.make_epoch(self.trainer.step, self.s.batch_size))
        t0 = time.perf_counter()
        self.epoch_c = epoch.lower(self.state, self.x_epoch, self.keys[0]).compile()
        t1 = time.perf_counter()
        self.end_c = None
        if self.trainer.end_epoch is not aet.train.identity_end:
            self.end_c = jax.jit(self.trainer.end_epoch).lower(self.state, self.x_epoch).compile()
        t2 = time.perf_counter()
        return {"epoch_compile_s": t1 - t0, "end_epoch_compile_s": t2 - t1}

    def fit_compile(self, x_epoch: np.ndarray, epochs: int = 5) -> dict[str, Any]:
        """``aet.train.fit`` itself for ``epochs`` epochs: the wall time of each epoch (from the call
        to the first epoch's end, then between epoch ends) and the compile excess, the first two
        epochs' time minus twice the median of the later ones (tracing, compiling and any
        recompile, with ``fit``'s set-up)."""
        ends: list[float] = []
        t0 = time.perf_counter()
        aet.train.fit(self.model, self.loss_fn, x_epoch, key=jax.random.key(7), optimizer=self.optimizer,
                      epochs=epochs, batch_size=self.s.batch_size, progress=False, variables=self.variables,
                      callbacks=[lambda e, v, h: ends.append(time.perf_counter()) and None])
        times = np.diff([t0, *ends])
        steady = float(np.median(times[2:])) if len(times) > 2 else float("nan")
        return {"fit_epoch_s": [float(t) for t in times],
                "fit_compile_excess_s": float(times[0] + times[1] - 2 * steady)}

    def epoch(self, seed: int) -> tuple[float, float]:
        """(wall, CPU) seconds for one compiled epoch plus ``end_epoch`` (what ``fit`` runs per epoch)."""
        key = jax.random.fold_in(self.run_key, 1000 + seed)
        c0, t0 = time.process_time(), time.perf_counter()
        state = self.epoch_c(self.state, self.x_epoch, key).state
        if self.end_c is not None:
            state = self.end_c(state, self.x_epoch)
        jax.block_until_ready(state)
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        self.state = state
        return dt, dc


class _MinimalVAE(nn.Module):
    """The setting's MLP VAE written directly in flax (no aetk_jax): the reference of :class:`MinimalEpoch`."""

    hidden: tuple[int, ...]
    latent_dim: int
    input_dim: int

    @nn.compact
    def __call__(self, x: jax.Array, key: jax.Array) -> jax.Array:
        h = x
        for w in self.hidden:
            h = nn.relu(nn.Dense(w)(h))
        mu, logsigma = nn.Dense(self.latent_dim)(h), nn.Dense(self.latent_dim)(h)
        z = mu + jnp.exp(logsigma) * jax.random.normal(key, mu.shape)
        for w in self.hidden[::-1]:
            z = nn.relu(nn.Dense(w)(z))
        logits = nn.Dense(self.input_dim)(z)
        loglik = jnp.sum(x * logits - jax.nn.softplus(logits), -1)
        kl = 0.5 * jnp.sum(jnp.exp(2 * logsigma) + mu**2 - 1 - 2 * logsigma, -1)
        return -jnp.mean(loglik - kl)


MINIMAL_GUARDS = ("bare", "select", "cond")


def minimal_scan(net: nn.Module, opt: optax.GradientTransformation, guard: str = "bare") -> Callable:
    """``epoch(params, opt_state, xb, key) -> ((params, opt_state), losses)``: a bare flax/optax scan.

    Each step takes the loss and gradient of ``net.apply(params, batch, key)`` and then, by ``guard``:
    ``"bare"`` applies the optax update unconditionally; ``"select"`` applies it and picks the new
    or old parameters and optimizer state leaf by leaf (``optax.tree.where``) by ``ok =
    isfinite(loss) ∧ isfinite(‖g‖)``; ``"cond"`` computes ``ok`` first and runs the update under
    ``lax.cond(ok, update, identity)`` (what ``aet.train.make_step``'s step does with ``accept``).
    Returns the jitted epoch.
    """
    if guard not in MINIMAL_GUARDS:
        raise ValueError(f"guard must be one of {MINIMAL_GUARDS}, got {guard!r}")

    def update(p: Any, st: Any, g: Any) -> tuple[Any, Any]:
        u, st = opt.update(g, st, p)
        return optax.apply_updates(p, u), st

    def step(carry: tuple, inp: tuple) -> tuple[tuple, jax.Array]:
        p, st = carry
        xb, k = inp
        loss, g = jax.value_and_grad(lambda q: net.apply(q, xb, k))(p)
        if guard == "bare":
            return update(p, st, g), loss
        ok = jnp.isfinite(loss) & jnp.isfinite(optax.tree.norm(g))
        if guard == "select":
            return optax.tree.where(ok, update(p, st, g), (p, st)), loss
        return jax.lax.cond(ok, lambda a: update(*a, g), lambda a: a, (p, st)), loss

    def epoch(p: Any, st: Any, xb: jax.Array, key: jax.Array) -> tuple:
        return jax.lax.scan(step, (p, st), (xb, jax.random.split(key, xb.shape[0])))

    return jax.jit(epoch)


class MinimalEpoch:
    """A lower bound for a VAE epoch in JAX: the same network and Adam in a bare ``lax.scan``.

    The data are taken in order as contiguous batches (no shuffle), one pre-split key per
    step, and the step has no non-finite guard, no gradient norm and no metrics but the
    loss: the cost of ``fit``'s epoch without anything ``fit`` adds. ``benchmarks.run``
    times it in rounds of its own with aetk_jax's epoch (timed right after pythae's epochs
    in the main rounds it measured 15 ms on digits-b64, 6 ms beside aetk_jax's epoch alone).
    """

    def __init__(self, s: Setting, x_epoch: np.ndarray, seed: int = 0):
        net = _MinimalVAE(tuple(s.hidden), s.latent_dim, s.input_dim)
        n = len(x_epoch) // s.batch_size
        self.xb = jax.device_put(np.asarray(x_epoch[: n * s.batch_size], np.float32).reshape(n, s.batch_size, -1))
        key = jax.random.key(seed)
        params = jax.jit(net.init)(key, self.xb[0], key)
        opt = optax.adam(s.learning_rate)
        self.state = (params, opt.init(params))
        self.compiled = minimal_scan(net, opt).lower(*self.state, self.xb, key).compile()
        self.key = key

    def epoch(self, seed: int) -> tuple[float, float]:
        """(wall, CPU) seconds of one epoch."""
        key = jax.random.fold_in(self.key, seed)
        c0, t0 = time.process_time(), time.perf_counter()
        (p, st), _ = self.compiled(*self.state, self.xb, key)
        jax.block_until_ready(p)
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        self.state = (p, st)
        return dt, dc


def dense_shapes(s: Setting) -> list[tuple[int, int]]:
    """``(fan_in, fan_out)`` of every dense layer of the setting's encoder and decoder (heads included)."""
    enc = [s.input_dim, *s.hidden]
    dec = [s.latent_dim, *s.hidden[::-1], s.input_dim]
    layers = list(zip(enc[:-1], enc[1:])) + [(s.hidden[-1], 2 * s.latent_dim)] + list(zip(dec[:-1], dec[1:]))
    return [(int(a), int(b)) for a, b in layers]


def matmul_products(s: Setting) -> tuple[Callable[[], Any], float]:
    """``(run, flops)``: ``run()`` computes the network's matrix products once and waits for them.

    One compiled program computes, for every dense layer (n_in, n_out), the forward product
    (B, n_in)·(n_in, n_out) and the backward ones (n_in, B)·(B, n_out) and (B, n_out)·(n_out, n_in)
    at B = ``s.batch_size``: 2·B·n_in·n_out·3 flops a layer. The first call is made here.
    """
    b, key = s.batch_size, jax.random.key(0)
    shapes = dense_shapes(s)
    args = []
    for i, (a, o) in enumerate(shapes):
        k1, k2, k3 = jax.random.split(jax.random.fold_in(key, i), 3)
        args.append((jax.random.normal(k1, (b, a)), jax.random.normal(k2, (a, o)), jax.random.normal(k3, (b, o))))

    @jax.jit
    def products(args):
        return [(x @ w, x.T @ g, g @ w.T) for x, w, g in args]

    jax.block_until_ready(products(args))
    return (lambda: jax.block_until_ready(products(args))), float(sum(3 * 2 * b * a * o for a, o in shapes))


def matmul_rate(s: Setting, n: int = 30, products: Optional[tuple[Callable[[], Any], float]] = None) -> dict[str, float]:
    """This machine's rate (GFLOP/s) for the network's matrix products (:func:`matmul_products`).

    The rate is their flops over the median wall time of ``n`` calls.
    """
    run, flops = products or matmul_products(s)
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        run()
        ts.append(time.perf_counter() - t0)
    sec = float(np.median(ts))
    return {"gflops_per_s": flops / sec / 1e9, "flops": flops, "ms": sec * 1e3}


def step_flops(compiled: Any) -> Optional[float]:
    """XLA's flop count of a compiled computation (``None`` where the backend reports none).

    XLA's cost analysis counts the body of a ``while`` loop once, whatever its trip count
    (a ``lax.scan`` or ``fori_loop`` of n matrix products reports one product): see
    :func:`unrolled_flops` for a count with every loop's iterations.
    """
    try:
        cost = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - not every backend reports it
        return None
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float((cost or {}).get("flops", 0.0))
    return flops if flops > 0 else None


def _unroll_scans(jaxpr: Any, counts: dict[str, int]) -> Any:
    """``jaxpr`` (a ``Jaxpr`` or ``ClosedJaxpr``) with every ``scan`` fully unrolled, recursively.

    ``counts`` tallies the scans unrolled and the ``while`` loops left (a ``lax.while_loop``
    has no static trip count; a ``fori_loop`` with static bounds is a scan).
    """
    from jax.extend import core as jc

    if isinstance(jaxpr, jc.ClosedJaxpr):
        return jc.ClosedJaxpr(_unroll_scans(jaxpr.jaxpr, counts), jaxpr.consts)

    def sub(v: Any) -> Any:
        if isinstance(v, (jc.ClosedJaxpr, jc.Jaxpr)):
            return _unroll_scans(v, counts)
        if isinstance(v, (tuple, list)) and v and all(isinstance(a, (jc.ClosedJaxpr, jc.Jaxpr)) for a in v):
            return type(v)(_unroll_scans(a, counts) for a in v)
        return v

    eqns = []
    for eqn in jaxpr.eqns:
        params = {k: sub(v) for k, v in eqn.params.items()}
        name = eqn.primitive.name
        if name == "scan":
            params["unroll"] = max(1, int(params["length"]))
            counts["scans"] = counts.get("scans", 0) + 1
        elif name == "while":
            counts["whiles"] = counts.get("whiles", 0) + 1
        eqns.append(eqn.replace(params=params))
    return jaxpr.replace(eqns=eqns)


def unrolled_flops(fn: Callable, *args: Any, compiled: Any = None) -> dict[str, Any]:
    """XLA's flop count of ``fn(*args)`` compiled with every ``lax.scan`` (and static ``fori_loop``) unrolled.

    The function's jaxpr is rewritten so that each scan, at any depth, has ``unroll`` equal
    to its length; compiled, it has no loop left whose body XLA's cost analysis would count
    once. Returns ``{"flops", "rolled_flops"}`` (the second: the same function compiled as
    written; ``compiled``, that compilation if the caller has it, else it is compiled here)
    with ``"scans"`` (how many were unrolled) and ``"whiles"`` (``lax.while_loop``s left,
    counted once each: with any, ``flops`` is a lower bound).
    """
    from jax.extend import core as jc

    closed = jax.make_jaxpr(fn)(*args)
    counts: dict[str, int] = {"scans": 0, "whiles": 0}
    unrolled = _unroll_scans(closed, counts)
    leaves = jax.tree_util.tree_leaves(args)
    flops = step_flops(jax.jit(jc.jaxpr_as_fun(unrolled)).lower(*leaves).compile())
    rolled = step_flops(compiled if compiled is not None else jax.jit(jc.jaxpr_as_fun(closed)).lower(*leaves).compile())
    return {"flops": flops, "rolled_flops": rolled, **counts}


def floor(runner: "JaxRunner", step_ms: Optional[float], epoch_step_ms: Optional[float] = None,
          rounds: int = 0, calls: int = 10) -> dict[str, Any]:
    """The step's FLOP floor (ms) and how far the measured median times are above it.

    ``step_ms``: the jitted step called alone (each call allocates its outputs);
    ``epoch_step_ms``: an epoch of ``fit``'s compiled scan divided by its steps (the state
    carried in place; for the RHVAE it includes the end-of-epoch metric update, whose
    flops the floor leaves out), from the main rounds. Issue #17's floor goal is judged on
    the epoch.

    ``rounds`` > 0 (the runner's epoch compiled, :meth:`JaxRunner.compile_epoch`): the epoch
    and the matrix products are timed in ``rounds`` paired rounds (one epoch, then
    ``calls`` calls of the products), so that each epoch is set against the rate measured
    beside it on this shared machine; ``epoch_step_over_floor`` is then the median of the
    rounds' ratios (all in ``paired``), and the main rounds' figure is kept as
    ``epoch_step_over_floor_main``. Otherwise the rate is one sample of 30 calls.

    The step's flops are :meth:`JaxRunner.step_flops`: XLA's cost analysis with every loop
    unrolled. ``flop_count`` keeps the count of the step as compiled (``rolled_gflop``, each
    loop body once: what results before 2026-12-03's third run used, too low for the
    HVAE/RHVAE whose leapfrog and fixed-point sweeps are scans).
    """
    count = runner.step_flops()
    flops, products = count["flops"], matmul_products(runner.s)
    paired: dict[str, list[float]] = {"epoch_step_ms": [], "gflops_per_s": []}
    if rounds > 0 and flops is not None:
        n_steps = int(runner.x_epoch.shape[0]) // runner.s.batch_size
        for r in range(rounds):
            paired["epoch_step_ms"].append(runner.epoch(500 + r)[0] * 1e3 / n_steps)
            paired["gflops_per_s"].append(matmul_rate(runner.s, calls, products)["gflops_per_s"])
        rate = {"gflops_per_s": float(np.median(paired["gflops_per_s"])), "flops": products[1],
                "samples": f"{rounds} rounds of {calls} calls, each beside one epoch"}
    else:
        rate = matmul_rate(runner.s, 30, products)
    out: dict[str, Any] = {"step_gflop": None if flops is None else flops / 1e9, "matmul": rate,
                           "flop_count": {"rolled_gflop": None if count["rolled_flops"] is None else count["rolled_flops"] / 1e9,
                                          "scans_unrolled": count["scans"], "while_loops_left": count["whiles"]}}
    if flops is None:
        return out
    floor_ms = lambda gflops: flops / (gflops * 1e9) * 1e3  # noqa: E731
    out["floor_ms"] = floor_ms(rate["gflops_per_s"])
    out["step_over_floor"] = None if step_ms is None else step_ms / out["floor_ms"]
    if paired["epoch_step_ms"]:
        ratios = [t / floor_ms(g) for t, g in zip(paired["epoch_step_ms"], paired["gflops_per_s"])]
        out["paired"] = {**paired, "epoch_step_over_floor": ratios}
        out["epoch_step_ms"] = float(np.median(paired["epoch_step_ms"]))
        out["epoch_step_over_floor"] = float(np.median(ratios))
        if epoch_step_ms is not None:
            out["epoch_step_ms_main"] = epoch_step_ms
            out["epoch_step_over_floor_main"] = epoch_step_ms / out["floor_ms"]
    elif epoch_step_ms is not None:
        out["epoch_step_ms"] = epoch_step_ms
        out["epoch_step_over_floor"] = epoch_step_ms / out["floor_ms"]
    return out


def versions() -> dict[str, str]:
    import flax

    return {"aetk_jax": aet.__version__, "jax": jax.__version__, "jaxlib": _ver("jaxlib"), "flax": flax.__version__,
            "optax": optax.__version__}


def _ver(name: str) -> str:
    from importlib.metadata import version

    try:
        return version(name)
    except Exception:  # noqa: BLE001
        return "unknown"


def device_name() -> str:
    dev = jax.devices()[0]
    return f"{dev.platform}:{getattr(dev, 'device_kind', '')}"
