"""A real two-node job through the deepspeed launcher itself, both "nodes" on this machine.

Two launchers share one hostfile (``node-a slots=1``, ``node-b slots=1``) and run concurrently with
``--no_ssh --node_rank R --master_addr 127.0.0.1``: the host names are never resolved, ``--node_rank``
indexes the hostfile, and each launcher starts its node's one rank. No ``--num_gpus``: with a hostfile
the launcher takes the slots from it (``--num_gpus`` would override every node's slots, and without a
hostfile it counts NUMA nodes on CPU). A launcher whose peer dies before the rendezvous waits forever,
so each has a deadline and the survivor is killed when one fails.

The job must train exactly as on one node with two ranks: the same per-step losses and index files.
"""

from __future__ import annotations

import os
import subprocess
import time

from faultkit import kill_job
from launch import BIN, free_port, read_trace

TIMEOUT = 300


def _two_node_job(hostfile, overrides, logs) -> list[str]:
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    procs = []
    for rank in (0, 1):
        cmd = [
            str(BIN / "deepspeed"),
            "--hostfile",
            str(hostfile),
            "--no_ssh",
            "--node_rank",
            str(rank),
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(port),
            "--module",
            "lfr_ds.train",
            *overrides,
        ]
        out = open(logs / f"node{rank}.log", "w")  # noqa: SIM115 -- closed below, once the launcher is gone
        procs.append((subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT), out))
    deadline = time.monotonic() + TIMEOUT
    try:
        while any(p.poll() is None for p, _ in procs) and time.monotonic() < deadline:
            if any(p.poll() not in (None, 0) for p, _ in procs):
                break  # a node failed: its peer would wait for it forever
            time.sleep(0.5)
    finally:
        for proc, out in procs:
            kill_job(proc)
            out.close()
    outputs = [(logs / f"node{rank}.log").read_text() for rank in (0, 1)]
    codes = [proc.returncode for proc, _ in procs]
    assert codes == [0, 0], f"launchers exited {codes}:\n" + "\n".join(o[-3000:] for o in outputs)
    return outputs


def test_two_nodes_train_like_one_node_with_two_ranks(job, ref2, tmp_path):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node-a slots=1\nnode-b slots=1\n")
    run = tmp_path / "run"
    outputs = _two_node_job(hostfile, job(run), tmp_path)
    for rank, out in enumerate(outputs):  # a real two-node world, one rank per node
        assert f"nnodes=2, num_local_procs=1, node_rank={rank}" in out
    assert "lfr-ds: 2 rank(s)" in outputs[0]

    one_node = read_trace(ref2)
    two_nodes = read_trace(run)
    assert [t["ids"] for t in two_nodes] == [t["ids"] for t in one_node]
    assert [t["losses"] for t in two_nodes] == [t["losses"] for t in one_node]
    index = sorted(p.name for p in (ref2 / "index").iterdir())
    assert index == sorted(p.name for p in (run / "index").iterdir())
    assert any(name.endswith("focus.npy") for name in index)
    for name in index:
        assert (run / "index" / name).read_bytes() == (ref2 / "index" / name).read_bytes(), name
