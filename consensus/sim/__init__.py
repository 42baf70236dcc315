"""Seeded cluster simulator for the consensus core (TigerBeetle's VOPR, for PBFT).

`python -m consensus.sim --seed N` runs one cluster of replicas and clients
over a simulated network whose every fault is drawn from the seed; see
`cluster.Simulation`. Like the rest of `consensus/`, it uses no clock, no
sockets and no unseeded randomness, so a seed replays the exact run.
"""

from .cluster import RunResult, Simulation, run_seed
from .faults import FaultPlan, draw_fault_plan

__all__ = ["FaultPlan", "RunResult", "Simulation", "draw_fault_plan", "run_seed"]
