"""The issue's done-when scenarios with real daemon processes on 127.0.0.1 (4 validators: hk-1, hk-2,
cn-1, cn-2; tests/support/node_cluster.py builds them with the real CLI), driven through `bayledger`:

- a commitment submitted through the CLI to a Shenzhen node by a mainland participant (bureau-cn)
  is verified through the CLI by a Hong Kong participant (bank-hk) against a Hong Kong node;
  the saved proof verifies offline; a tampered copy is refused naming the failed check;
- revoked (through a different CN node), it shows REVOKED at an HK node;
- a commitment revoked by the regulators of both jurisdictions shows REVOKED by governance;
- an admission co-signed by one jurisdiction's regulator alone is refused; co-signed by both it
  takes effect, and the new participant can submit and query;
- a plain socket + ssl + msgpack client calls every read method of a real node (over TLS).
Waits are bounded deadlines for replication, never timing assertions.
"""

from __future__ import annotations

import json

import msgpack
import pytest


from node.cli import main  # noqa: E402
from tests.support.cli import run

pytestmark = pytest.mark.slow


def test_cross_border_submit_verify_revoke_and_admission(network, tmp_path, capsys):
    keys = network.keys_dir
    genesis = str(network.genesis_path)
    # The nodes serve RPC over TLS; the CLI trusts the cluster's CA.
    node_rpc = {node_id: ["--rpc", f"127.0.0.1:{node.rpc}", "--ca", str(network.ca_path)]
                for node_id, node in network.nodes.items()}

    # A mainland bureau commits a report through a Shenzhen node.
    document = tmp_path / "report-cn.pdf"
    document.write_bytes("深圳 credit report: 陈大文, score 698\n".encode() * 50)
    code, out, err = run(capsys, ["submit", str(document), *node_rpc["cn-1"], "--key", str(keys / "bureau-cn.json"),
                                  "--genesis", genesis])
    assert code == 0, (out, err)
    receipt_path = tmp_path / "report-cn.pdf.receipt.json"
    receipt = json.loads(receipt_path.read_text())
    assert receipt["jurisdiction"] == "CN" and receipt["author"] == "bureau-cn" and receipt["leaf_index"] == 0

    # A Hong Kong bank verifies it against a Hong Kong node (once that node has the block).
    network.wait_height(["hk-1", "hk-2"], receipt["height"])
    proof_path = tmp_path / "report-cn.proof"
    code, out, err = run(capsys, ["verify", str(document), "--receipt", str(receipt_path), *node_rpc["hk-1"],
                                  "--key", str(keys / "bank-hk.json"), "--genesis", genesis,
                                  "--proof-out", str(proof_path)])
    assert code == 0 and out.startswith("MATCH") and f"height {receipt['height']}" in out, (out, err)
    code, out, _ = run(capsys, ["proof", "verify", str(proof_path), "--genesis", genesis])
    assert code == 0 and out.startswith("MATCH")
    proof = msgpack.unpackb(proof_path.read_bytes(), raw=False)
    proof["inclusion_path"] = [bytes(32)] if not proof["inclusion_path"] else [bytes(32)] + proof["inclusion_path"][1:]
    proof["tree_size"] = proof["tree_size"]
    tampered = tmp_path / "tampered.proof"
    tampered.write_bytes(msgpack.packb(proof, use_bin_type=True))
    code, out, _ = run(capsys, ["proof", "verify", str(tampered), "--genesis", genesis,
                                "--receipt", str(receipt_path)])
    assert code == 2 and out.startswith("INVALID PROOF: check inclusion"), out

    # The author revokes it through the other Shenzhen node; Hong Kong sees REVOKED.
    code, out, err = run(capsys, ["revoke", "--receipt", str(receipt_path), "--reason", "superseded",
                                  *node_rpc["cn-2"], "--key", str(keys / "bureau-cn.json")])
    assert code == 0 and out.startswith("COMMITTED"), (out, err)
    revoke_height = int(out.split("at height ")[1].split(",")[0])
    network.wait_height(["hk-2"], revoke_height)
    code, out, err = run(capsys, ["verify", str(document), "--receipt", str(receipt_path), *node_rpc["hk-2"],
                                  "--key", str(keys / "bank-hk.json"), "--genesis", genesis])
    assert code == 1 and out.startswith("REVOKED") and "superseded" in out, (out, err)

    # Admission: one jurisdiction alone is refused; both together take effect.
    assert main(["keygen", "--out", str(keys / "bank-hk2.json"), "--id", "bank-hk2"]) == 0
    capsys.readouterr()
    admit = ["admit", "--id", "bank-hk2", "--jurisdiction", "HK", "--role", "bank",
             "--public-key", str(keys / "bank-hk2.json"), "--genesis", genesis, *node_rpc["hk-2"]]
    code, out, err = run(capsys, [*admit, "--key", str(keys / "gov-hk.json")])
    assert code == 2 and "CN needs 1 more" in err and "nothing was sent" in err, (out, err)   # stopped locally
    entry_path = tmp_path / "admit.entry"
    code, out, _ = run(capsys, [*admit, "--key", str(keys / "gov-hk.json"), "--out", str(entry_path)])
    assert code == 0 and "CN needs 1 more" in out
    code, out, err = run(capsys, ["cosign", str(entry_path), "--key", str(keys / "gov-cn.json"), "--submit",
                                  "--genesis", genesis, *node_rpc["cn-1"]])
    assert code == 0 and out.startswith("COMMITTED"), (out, err)
    admitted_height = int(out.split("at height ")[1].split(",")[0])
    network.wait_height(["hk-1"], admitted_height)

    second = tmp_path / "report-hk.pdf"
    second.write_bytes(b"HK credit report of Chan Tai Man, score 731\n" * 30)
    code, out, err = run(capsys, ["submit", str(second), *node_rpc["hk-1"], "--key", str(keys / "bank-hk2.json"),
                                  "--genesis", genesis])
    assert code == 0, (out, err)
    second_receipt = json.loads((tmp_path / "report-hk.pdf.receipt.json").read_text())
    network.wait_height(["cn-2"], second_receipt["height"])
    code, out, err = run(capsys, ["verify", str(second), "--receipt", str(tmp_path / "report-hk.pdf.receipt.json"),
                                  *node_rpc["cn-2"], "--key", str(keys / "bureau-cn.json"), "--genesis", genesis])
    assert code == 0 and out.startswith("MATCH"), (out, err)

    # The regulators of both jurisdictions revoke the newcomer's commitment; Shenzhen sees REVOKED.
    code, out, err = run(capsys, ["revoke", "--governance", "--receipt", str(tmp_path / "report-hk.pdf.receipt.json"),
                                  "--reason", "regulator order", *node_rpc["hk-2"], "--genesis", genesis,
                                  "--key", str(keys / "gov-hk.json"), "--key", str(keys / "gov-cn.json")])
    assert code == 0 and out.startswith("COMMITTED"), (out, err)
    network.wait_height(["cn-2"], int(out.split("at height ")[1].split(",")[0]))
    code, out, err = run(capsys, ["verify", str(second), "--receipt", str(tmp_path / "report-hk.pdf.receipt.json"),
                                  *node_rpc["cn-2"], "--key", str(keys / "bureau-cn.json"), "--genesis", genesis])
    assert code == 1 and out.startswith("REVOKED") and "by governance" in out, (out, err)

    # A plain socket + msgpack client (node_cluster.RpcClient) calls the read methods of a real node.
    client = network.nodes["hk-1"].rpc_client()
    try:
        status = client.call("status")
        assert status["chain_id"] == "bayledger-it" and status["jurisdiction"] == "HK"
        ids = ["hk-1", "hk-2", "cn-1", "cn-2"]
        assert [v["id"] for v in client.call("validators")] == ids
        assert [v["id"] for v in client.call("epochs")["epochs"][-1]["validators"]] == ids
        assert client.call("header", 1)["header"]["height"] == 1
        assert len(client.call("block", 1)["entries"]) >= 1
        tree_size = client.call("status")["tree_size"]
        assert client.call("consistency", 1, tree_size)["size2"] == tree_size
        assert client.call("participant", "bank-hk2")["status"] == "active"
    finally:
        client.close()
