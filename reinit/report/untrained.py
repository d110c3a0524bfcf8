"""The `untrained` flag: a weight that looks like it was never trained while its siblings were
(Megatron-LM#5844: experts left at their random init "with no error and no warning").

The statistic, from the statistics every report already has (mean, std, min, max, count):

- **scale**: the std is a fresh init's, within `std_tolerance` (10%, or 5 standard errors of a
  sample std for a small tensor): the model's init scale (`--model`'s own init, else the
  config's `initializer_range`), or PyTorch's own default for a Linear/Conv (kaiming-uniform
  with a=√5: U(±1/√fan_in), std 1/√(3·fan_in));
- **shape**: the largest |x − mean| in units of std, `tail`, is no larger than a fresh draw
  gives. For n normal values the maximum of |x| follows a Gumbel law with location
  a_n = √(2 ln 2n) − (ln ln 2n + ln 4π)/(2√(2 ln 2n)) and scale b_n = 1/√(2 ln 2n); a tail
  above a_n + 6·b_n (one draw in ~400) is not a normal init. A uniform draw has tail √3.
  Trained weights are heavy-tailed: MiniLM's matrices have tails 5.2-175 where a 384×384
  normal draw gives 4.5 ± 0.2;
- **siblings**: fewer than half of its siblings look like that: the other tensors of its kind
  and shape when there are at least 2, else every other ≥2-D float weight of the checkpoint
  (a CNN's `conv1`, `conv2`, … are kinds of their own). A checkpoint that is untrained
  throughout (a fresh model) flags nothing.

Tensors re-initialized by this run are not judged (they are meant to be fresh). Measured false
positives: docs/guide/report-judgement.md."""

from __future__ import annotations

__all__ = ["TAIL_SIGMAS", "InitStd", "gaussian_tail", "looks_fresh", "tail", "untrained"]

import math
from collections import defaultdict
from collections.abc import Callable, Sequence

from reinit.report.entries import TensorEntry
from reinit.report.flags import kind_of, std_tolerance

#: Gumbel scales above the expected largest |x| of a normal draw that still count as normal.
TAIL_SIGMAS = 6.0

UNIFORM_TAIL = math.sqrt(3.0) * 1.02  # U(-b, b): max |x| / std = √3 (2% for rounding)

#: The std a tensor would have at the model's own init (None where nothing says).
InitStd = Callable[[TensorEntry], float | None]


def tail(e: TensorEntry) -> float | None:
    """max |x − mean| / std over the finite values, or None when it cannot be computed."""
    s = e.after
    if None in (s.mean, s.std, s.min, s.max) or not s.std or s.std <= 0:
        return None
    assert s.mean is not None and s.min is not None and s.max is not None
    return max(abs(s.max - s.mean), abs(s.min - s.mean)) / s.std


def gaussian_tail(n: int) -> float:
    """The largest tail a normal draw of `n` values gives but once in ~400: a_n + 6·b_n."""
    ln = math.sqrt(2.0 * math.log(2.0 * max(n, 2)))
    a = ln - (math.log(math.log(2.0 * max(n, 2))) + math.log(4.0 * math.pi)) / (2.0 * ln)
    return a + TAIL_SIGMAS / ln


def _near(std: float, expected: float | None, n: int) -> bool:
    return bool(expected) and abs(std / (expected or 1.0) - 1.0) <= std_tolerance(n)


def looks_fresh(e: TensorEntry, init_std: InitStd | None) -> bool:
    """Is this tensor's std and distribution those of a fresh init (module docstring)?"""
    z, std, n = tail(e), e.after.std, e.after.count
    if z is None or std is None or n < 2 or e.after.nonfinite:
        return False
    # the tail first: it is free, and the model's init scale may need a draw (`--model`)
    if z <= gaussian_tail(n) and init_std is not None and _near(std, init_std(e), n):
        return True
    torch_default = 1.0 / math.sqrt(3.0 * e.fan_in) if e.fan_in else None
    return _near(std, torch_default, n) and z <= UNIFORM_TAIL


def _judged(e: TensorEntry) -> bool:
    return e.is_float and len(e.shape) >= 2 and e.after.std is not None and e.after.std > 0


def untrained(entries: Sequence[TensorEntry], init_std: InitStd | None) -> set[str]:
    """The names of the tensors that look never trained while their siblings were (linear in
    the number of tensors: each group's fresh count is summed once)."""
    judged = [e for e in entries if _judged(e)]
    fresh = {e.name: looks_fresh(e, init_std) for e in judged}
    size: dict[tuple[str, tuple[int, ...]], int] = defaultdict(int)
    fresh_in: dict[tuple[str, tuple[int, ...]], int] = defaultdict(int)
    for e in judged:
        size[(kind_of(e.name), e.shape)] += 1
        fresh_in[(kind_of(e.name), e.shape)] += fresh[e.name]
    all_fresh = sum(fresh.values())
    out = set()
    for e in judged:
        if not fresh[e.name] or e.action == "reinit":
            continue
        key = (kind_of(e.name), e.shape)
        siblings, fresh_siblings = size[key] - 1, fresh_in[key] - 1
        if siblings < 2:  # no kind to speak of: the checkpoint's other weights
            siblings, fresh_siblings = len(judged) - 1, all_fresh - 1
        if siblings >= 2 and fresh_siblings < siblings / 2:
            out.add(e.name)
    return out
