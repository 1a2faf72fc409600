"""Hypothesis strategies shared by the fuzz suites."""

from __future__ import annotations

from hypothesis import strategies as st

# what a client's JSON can hold where a field's value goes: NaN and the infinities (Python's json reads
# and writes them), integers past 64 bits, strings that look like the protocol's own
json_scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(-(2**70), 2**70), st.sampled_from([0, -1, 1, 2**31, 2**63, 2**64, -(2**63) - 1]),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["<region>", "<image>", "data:image/png;base64,", "data:image/png;base64,!!", "user", "tiny"]),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=8,
)
