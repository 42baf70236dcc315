"""The simulator's structured Byzantine garbage (consensus/sim/hostile.py) and what it must find.

Issue 14, points 1-2: ~1,000 nested msgpack arrays crashed `decode_message` with RecursionError
through codec's recursive canonical check, and the same nesting as an entry of a REQUESTS
message crashed the entry check. Random bytes never reach that depth; this garbage does (on
8a07196 the sweep fails seed 59 on the first and seed 30 on the second). These tests pin
(a) that the generator makes every category it claims, with the properties that matter, and
(b) that a short run with Byzantine garbage injects structured messages and passes.
"""

import dataclasses
import random
import struct
from collections import Counter

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings

from consensus import codec, messages
from consensus.sim import Simulation, adapter, draw_fault_plan, hostile, run_seed
from consensus.sim.byzantine import STRUCTURED_CATEGORIES, ByzantineBehaviour, structured_garbage_count
from consensus.sim.cluster import CHAIN_ID, make_validators

from tests.support import hostile_msgpack as hm

SAMPLES = 600


def depth_of(value) -> int:
    """Nesting depth of a decoded value, without recursion (a deep value must not hurt the test)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (list, dict)):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def leaves(value):
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        else:
            yield item


NOT_MSGPACK = object()


def decode(data: bytes):
    """msgpack's own decode (C, no Python recursion); NOT_MSGPACK if it is not one msgpack value."""
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception:
        return NOT_MSGPACK


def samples(category: str, template: bytes | None = None, count: int = SAMPLES) -> list[bytes]:
    rng = random.Random(category)
    return [hostile.generate(rng, template=template, category=category)[1] for _ in range(count)]


# -- (a) every category, with what makes it hostile ------------------------------------


def test_the_generator_is_deterministic_per_seed():
    first = [hostile.generate(random.Random(7), template=hostile.template_message(random.Random(1)))]
    assert first == [hostile.generate(random.Random(7), template=hostile.template_message(random.Random(1)))]
    rng = random.Random(3)
    assert Counter(hostile.generate(rng)[0] for _ in range(600)).keys() == set(hostile.CATEGORIES)


def test_deep_nesting_reaches_msgpack_limit_and_python_recursion_limit():
    depths = []
    for data in samples("deep_nesting"):
        value = decode(data)
        depths.append(depth_of(value) if value is not NOT_MSGPACK else None)
    accepted = [d for d in depths if d is not None]
    # Decodable by msgpack, and deeper than Python's default recursion limit: a recursive walk breaks.
    assert max(accepted) == hostile.MSGPACK_DEPTH_MAX
    assert sum(d >= 1000 for d in accepted) > SAMPLES // 10
    # And past msgpack's limit, which msgpack itself must refuse.
    assert depths.count(None) > 0
    # The exact frame is among the styles: [[[...]]] one byte a level.
    assert hostile.deep_nesting(random.Random(0), 1000, style=0) == b"\x91" * 999 + b"\x90"


def test_nesting_at_msgpack_limit_decodes_and_one_more_does_not():
    limit = hostile.MSGPACK_DEPTH_MAX
    assert depth_of(decode(hostile.deep_nesting(random.Random(0), limit, style=0))) == limit
    assert decode(hostile.deep_nesting(random.Random(0), limit + 1, style=0)) is NOT_MSGPACK


def test_huge_declared_lengths_go_past_the_data():
    declared_past = really_huge = 0
    for data in samples("huge_length"):
        if data[0] in (0xC6, 0xDB, 0xDD, 0xDF, 0xC9) and len(data) >= 5:
            declared = struct.unpack(">I", data[1:5])[0]
            if declared > len(data):
                declared_past += 1
                assert decode(data) is NOT_MSGPACK
                continue
        value = decode(data)
        if isinstance(value, (list, dict)) and len(value) >= 25_000:
            really_huge += 1
    assert declared_past > SAMPLES // 3
    assert really_huge > 0
    assert any(data[1:5] == b"\xff\xff\xff\xff" for data in samples("huge_length"))


def test_absurd_values_are_valid_msgpack_at_the_edges():
    seen_ints, huge_strings = set(), 0
    for data in samples("absurd_value"):
        value = decode(data)
        assert value is not NOT_MSGPACK  # valid msgpack
        for leaf in leaves(value):
            if isinstance(leaf, int) and not isinstance(leaf, bool):
                seen_ints.add(leaf)
            if isinstance(leaf, (str, bytes)) and len(leaf) >= 65_536:
                huge_strings += 1
    assert {hostile.UINT64_MAX, hostile.INT64_MIN, hostile.INT64_MAX} <= seen_ints
    assert huge_strings > 0


def test_type_soup_has_every_msgpack_format():
    def family(byte: int) -> str:
        for low, high, name in ((0x00, 0x7F, "fixint"), (0x80, 0x8F, "fixmap"), (0x90, 0x9F, "fixarray"),
                                (0xA0, 0xBF, "fixstr"), (0xE0, 0xFF, "negfixint")):
            if low <= byte <= high:
                return name
        return hex(byte)

    rng = random.Random(5)
    first_bytes = Counter(family(hostile.type_soup(rng)[0]) for _ in range(4000))
    expected = {"fixint", "fixmap", "fixarray", "fixstr", "negfixint"} | {hex(b) for b in range(0xC0, 0xE0)}
    assert expected <= set(first_bytes), expected - set(first_bytes)


def test_embedded_parts_sit_inside_well_formed_messages():
    """The issue's two shapes, and a hostile value at many positions of the honest message."""
    deep_entry = deep_hash = other = 0
    vote = messages.encode(messages.Prepare(0, 1, bytes(32), "r0", bytes(64)))
    for data in samples("embedded", template=vote, count=1200):
        value = decode(data)
        if not isinstance(value, dict):
            continue
        if value.get("type") == "requests" and isinstance(value.get("requests"), list):
            entry = value["requests"][-1]
            inner = decode(entry) if isinstance(entry, bytes) else entry
            if inner is not NOT_MSGPACK and depth_of(inner) >= 900:
                deep_entry += 1
        elif value.get("type") == "prepare" and depth_of(value.get("header_hash")) >= 900:
            deep_hash += 1
        elif value.get("type") == "prepare":
            other += 1
    assert deep_entry > 10 and deep_hash > 10 and other > 100


def test_truncated_messages_do_not_decode():
    template = hostile.template_message(random.Random(2))
    cut = samples("truncated", template=template)
    assert sum(decode(data) is NOT_MSGPACK for data in cut) > 0.95 * len(cut)
    assert any(template.startswith(data) for data in cut)


def test_absurd_signed_messages_pass_the_boundary_with_numbers_at_the_maximum():
    vset, keys = make_validators(draw_fault_plan(1, replicas=4))
    ctx = adapter.Context(vset, CHAIN_ID, keys["r1"], "r1")
    vote = messages.encode(messages.sign(messages.Prepare(0, 1, bytes(32), "r1"), keys["r1"], CHAIN_ID))
    rng = random.Random(4)
    at_max = 0
    for _ in range(40):
        message = messages.decode_message(adapter.absurd_signed(ctx, vote, rng), vset, CHAIN_ID)
        at_max += messages.INTEGER_MAX in (message.view, message.height)
    assert at_max > 5
    assert adapter.absurd_signed(ctx, b"not a message", rng) is None


def test_byzantine_garbage_counts_every_structured_category():
    vset, keys = make_validators(draw_fault_plan(1, replicas=4))
    behaviour = ByzantineBehaviour(random.Random(9), "r1", keys["r1"], CHAIN_ID, ["r0", "r1", "r2", "r3"], vset,
                                   ("garbage",), 1.0)
    vote = messages.encode(messages.sign(messages.Prepare(0, 1, bytes(32), "r1"), keys["r1"], CHAIN_ID))
    for tick in range(1500):
        behaviour.outgoing(tick, ["r0"], vote)
    altered = behaviour.altered
    # One count per alteration: unstructured as byz_garbage, structured by category; about half each.
    assert sum(altered.values()) == 1500
    assert 500 < structured_garbage_count(altered) < 1000 and 500 < altered["byz_garbage"] < 1000
    assert all(altered[f"byz_garbage_{c}"] > 0 for c in STRUCTURED_CATEGORIES), altered


# -- the hypothesis strategies others reuse -------------------------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(hm.hostile_msgpack())
def test_hypothesis_strategies_give_bytes_msgpack_or_not(data):
    assert isinstance(data, bytes)
    decode(data)  # msgpack itself never fails other than by raising


@settings(max_examples=30, deadline=None)
@given(hm.requests_with_deep_entry())
def test_the_deep_requests_strategy_is_a_requests_map(data):
    value = decode(data)
    if value is NOT_MSGPACK:  # a bare entry array so deep that the message passes msgpack's limit
        assert data.count(b"\x91") >= hostile.MSGPACK_DEPTH_MAX - 3
        return
    assert value["type"] == "requests" and len(value["requests"]) == 1


def test_every_truncation_and_every_position_enumerate():
    data = codec.pack({"type": "commit", "view": 1})
    assert list(hm.every_truncation(data)) == [data[:i] for i in range(len(data))]
    wire = hm.TEMPLATES[1]()
    assert len(list(hm.every_position(wire, b"\x90"))) == 2 * len(hm.positions(wire))


# -- (b) in the simulator -------------------------------------------------------------


def garbage_plan(seed: int, ticks: int = 200):
    plan = draw_fault_plan(seed, replicas=4, byzantine=1, ticks=ticks)
    return dataclasses.replace(plan, byzantine_behaviours=("garbage",), byzantine_probability=0.5)


@pytest.mark.parametrize("seed", [59, 30, 3])
def test_a_run_with_structured_garbage_injects_it_and_passes(seed):
    """Fails on 8a07196 (RecursionError out of on_message, reported as the seed's failure) until
    every decoder is bounded and total; the run must then keep every invariant."""
    result = run_seed(garbage_plan(seed))
    assert structured_garbage_count(result.faults) > 0
    assert result.ok, result.summary()
    assert structured_garbage_count(result.faults) > 20
    assert result.faults["byz_garbage_deep_nesting"] > 0 and result.faults["byz_garbage_embedded"] > 0


def test_a_replica_that_raises_fails_the_seed_with_the_call_chain():
    sim = Simulation(garbage_plan(1, ticks=60))
    victim = sim.nodes[sim.honest_ids[0]].replica

    def explode(sender, data):
        raise RecursionError("deep")

    victim._replica.on_message = explode
    result = sim.run()
    assert not result.ok
    assert f"replica {sim.honest_ids[0]} raised RecursionError in on_message from" in result.failure
    assert "explode" in result.failure


def test_cli_reports_structured_garbage_and_a_raising_seed_as_failed(capsys, monkeypatch):
    import consensus.sim.__main__ as cli

    assert cli.main(["--seed", "3", "--ticks", "100", "--replicas", "4", "--byzantine", "1", "--quiet"]) in (0, 1)
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith("runs=1 failed=") and " structured_garbage=" in last and "faults_injected:" in last

    def raising(plan, log=None):
        if plan.seed == 1:
            raise RecursionError("maximum recursion depth exceeded")
        return run_seed(plan, log=log)

    monkeypatch.setattr(cli, "run_seed", raising)
    status = cli.main(["--seeds", "0..2", "--ticks", "40", "--replicas", "4", "--byzantine", "0", "--quiet"])
    out = capsys.readouterr().out.splitlines()
    assert status == 1
    assert any(line.startswith("seed=1 FAIL (crashed): the run raised RecursionError") for line in out), out
    assert "reproduce with: python -m consensus.sim --seed 1 --replicas 4 --byzantine 0 --ticks 40" in out
    assert out[-1].startswith("runs=3 failed=1 ") and out[-1].endswith("failing_seeds=1")
