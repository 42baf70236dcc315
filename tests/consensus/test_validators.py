"""The one quorum rule (ValidatorSet.is_quorum) against a deliberately simple reference, and the refused-set rule.

The reference counts signers by brute force from the definition in the issue:
at least 2f + 1 distinct validators (for n = 3f + 1; (n + f) // 2 + 1 in general)
and at least min_signers_per_jurisdiction from each jurisdiction present.
"""

import nacl.signing
import pytest
from hypothesis import given, settings, strategies as st

from consensus.validators import JURISDICTIONS, Validator, ValidatorSet, ValidatorSetError


def key(i: int) -> bytes:
    return nacl.signing.SigningKey(i.to_bytes(2, "big") * 16).verify_key.encode()


def build(jurisdictions, minimum=1):
    return ValidatorSet(tuple(Validator(f"v{i}", key(i), j) for i, j in enumerate(jurisdictions)), minimum)


def reference_is_quorum(jurisdictions, minimum, signers):
    n = len(jurisdictions)
    f = (n - 1) // 3
    distinct = set(s for s in signers if 0 <= s < n)
    if len(distinct) < (n + f) // 2 + 1:
        return False
    for j in set(jurisdictions):
        if sum(1 for s in distinct if jurisdictions[s] == j) < minimum:
            return False
    return True


def reference_refused(jurisdictions, minimum):
    n = len(jurisdictions)
    f = (n - 1) // 3
    return any(jurisdictions.count(j) < minimum + f for j in set(jurisdictions))


valid_sets = st.integers(1, 4).flatmap(
    lambda f: st.tuples(
        st.lists(st.sampled_from(JURISDICTIONS), min_size=3 * f + 1, max_size=3 * f + 1),
        st.integers(0, 2),
    )
)


@settings(max_examples=300, deadline=None)
@given(valid_sets, st.data())
def test_is_quorum_matches_the_reference(shape, data):
    jurisdictions, minimum = shape
    if reference_refused(jurisdictions, minimum):
        with pytest.raises(ValidatorSetError, match="could halt the chain"):
            build(jurisdictions, minimum)
        return
    vset = build(jurisdictions, minimum)
    n = len(jurisdictions)
    signers = data.draw(st.lists(st.integers(-1, n), max_size=2 * n))
    ids = [f"v{s}" if 0 <= s < n else "stranger" for s in signers]
    assert vset.is_quorum(ids) == reference_is_quorum(jurisdictions, minimum, signers)


@settings(max_examples=200, deadline=None)
@given(valid_sets)
def test_refused_exactly_when_a_jurisdiction_is_too_small(shape):
    jurisdictions, minimum = shape
    if reference_refused(jurisdictions, minimum):
        with pytest.raises(ValidatorSetError) as info:
            build(jurisdictions, minimum)
        assert "min_signers_per_jurisdiction + f" in str(info.value)
    else:
        vset = build(jurisdictions, minimum)
        # Every quorum is reachable even with f validators of any one jurisdiction silent.
        for j in set(jurisdictions):
            members = [i for i, x in enumerate(jurisdictions) if x == j]
            silent = set(members[: vset.f])
            assert vset.is_quorum(f"v{i}" for i in range(len(jurisdictions)) if i not in silent)


def test_edges_of_the_rule_for_four_validators():
    vset = build(["HK", "HK", "CN", "CN"])
    assert vset.f == 1 and vset.quorum_size == 3
    assert vset.is_quorum(["v0", "v1", "v2"])
    assert not vset.is_quorum(["v0", "v2"])                 # one short
    assert not vset.is_quorum(["v0", "v0", "v2"])           # duplicates count once
    assert not vset.is_quorum(["v0", "v2", "nobody"])       # unknown ids are ignored
    with pytest.raises(ValidatorSetError, match="CN has 1 validators"):
        build(["HK", "HK", "HK", "CN"])                     # CN needs 1 + f = 2
    strict = build(["HK"] * 6 + ["CN"] * 6, minimum=3)  # n = 12, f = 3, quorum 8, 3 per jurisdiction
    assert strict.quorum_size == 8
    assert strict.is_quorum([f"v{i}" for i in (0, 1, 2, 6, 7, 8, 9, 10)])
    assert not strict.is_quorum([f"v{i}" for i in (0, 1, 6, 7, 8, 9, 10, 11)])  # only two HK signers


def test_primary_rotates_through_the_set_in_order():
    vset = build(["HK", "HK", "CN", "CN"])
    assert [vset.primary(v).id for v in range(6)] == ["v0", "v1", "v2", "v3", "v0", "v1"]
