"""Deliberately broken parts of the worker that more than one mutation test uses: a property
check must fail on them (a check that cannot fail is what the mutation tests guard against).

They are patched in through public methods only, so that they survive refactors of what is
behind them; a mutation that stops taking effect makes its mutation test fail ("DID NOT RAISE")
rather than pass silently.
"""

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def leaking_fusion_store(runtime) -> Iterator[None]:
    """A broken worker: each request conditions on the garment features the request before it
    left in its pipeline's fusion store (a store that is not refilled), patched in through the
    fusion's public `use_features`. Drops what the garment cache took in meanwhile on exit."""
    fusions = [pipe.fusion for pipe in runtime.pipelines.values()]
    for fusion in fusions:
        left: list[dict] = []

        def leak(features, use=fusion.use_features, left=left) -> None:
            if left:
                use(left.pop())
            left.append(features)

        def use_features(features, real=fusion.use_features, leak=leak) -> None:
            real(features)
            leak(features)

        # encode_garment conditions through self.use_features: this instance attribute, too.
        fusion.use_features = use_features
    try:
        yield
    finally:
        for fusion in fusions:
            del fusion.use_features
        runtime.garment_cache.clear()  # entries filled with the wrong garment's features
