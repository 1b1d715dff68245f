"""Helpers for the ``functools.singledispatch`` probability functions."""
from __future__ import annotations

import functools
from typing import Any, Callable


def dispatched(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Make a single-dispatch function whose fallback raises a helpful ``TypeError``.

    The fallback names the unregistered type and shows the registration call,
    e.g. ``@aet.decoder_loglikelihood.register(PoissonDecoder)``.
    """

    def wrap(doc_fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.singledispatch
        def fn(module: Any, *args: Any, **kwargs: Any) -> Any:
            tname = type(module).__name__
            raise TypeError(
                f"{name}: no function is registered for {tname}. Register one with\n"
                f"    @aet.{name}.register({tname})\n"
                f"    def _(module, ...): ...\n"
                f"(see the signature and docstring of aet.{name})."
            )

        functools.update_wrapper(fn, doc_fn)
        return fn

    return wrap
