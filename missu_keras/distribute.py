"""Distribution: which ``tf.distribute`` strategy to train with, who writes the files,
and ``TF_CONFIG`` for several worker processes on one machine.

Multi-machine training is TensorFlow's own ``MultiWorkerMirroredStrategy``: start the
same ``missu-keras train`` command on every machine, each with a ``TF_CONFIG`` naming
the whole cluster and its own index. `local_tf_configs` writes those for N workers on
this machine (to try it, or for several processes on one multi-GPU host):

>>> configs = local_tf_configs(2, ports=[23456, 23457])
>>> json.loads(configs[1])
{'cluster': {'worker': ['localhost:23456', 'localhost:23457']}, 'task': {'type': 'worker', 'index': 1}}

Then, in two shells: ``TF_CONFIG='<configs[0]>' missu-keras train ...`` and
``TF_CONFIG='<configs[1]>' missu-keras train ...`` with the same arguments.
"""

from __future__ import annotations

import json
import os
import socket
from typing import List, Optional, Sequence

import tensorflow as tf


def free_ports(n: int) -> List[int]:
    """``n`` TCP ports that are free on this machine now."""
    sockets, ports = [], []
    try:
        for _ in range(int(n)):
            s = socket.socket()
            s.bind(("localhost", 0))
            sockets.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in sockets:
            s.close()
    return ports


def local_tf_configs(num_workers: int, ports: Optional[Sequence[int]] = None,
                     host: str = "localhost") -> List[str]:
    """One ``TF_CONFIG`` JSON string per worker of a cluster on this machine; worker 0
    is the chief (it writes checkpoints, logs and the final model)."""
    if int(num_workers) < 1:
        raise ValueError(f"num_workers must be >= 1. Received: {num_workers!r}")
    ports = list(ports) if ports is not None else free_ports(num_workers)
    if len(ports) != int(num_workers):
        raise ValueError(f"expected {num_workers} ports, received {len(ports)}: {ports}")
    workers = [f"{host}:{p}" for p in ports]
    return [json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}})
            for i in range(int(num_workers))]



def choose_strategy():
    """``MultiWorkerMirroredStrategy`` when ``TF_CONFIG`` names several workers,
    ``MirroredStrategy`` when several GPUs are visible, else the default strategy."""
    tf_config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
    cluster = tf_config.get("cluster", {})
    workers = sum(len(cluster.get(k, [])) for k in ("chief", "worker"))
    if workers > 1:
        return tf.distribute.MultiWorkerMirroredStrategy()
    if len(tf.config.list_logical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def is_chief(strategy) -> bool:
    """Whether this process writes checkpoints, logs and the final model."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "cluster_spec", None):
        return True
    spec = resolver.cluster_spec().as_dict()
    if not spec:
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if "chief" in spec:
        return task_type == "chief"
    return task_type in (None, "worker") and (task_id or 0) == 0


def worker_tag(strategy) -> str:
    """``""`` for the chief, ``"worker<N>"`` for the other workers of a cluster."""
    if is_chief(strategy):
        return ""
    resolver = strategy.cluster_resolver
    return f"{resolver.task_type}{resolver.task_id}"
