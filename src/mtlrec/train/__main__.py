"""``python -m mtlrec.train``: the ``mtlrec train`` command, as the module torchrun launches on every rank.

Example (2 nodes of 8 GPUs; run on each node with its own ``--node-rank``)::

    torchrun --nnodes 2 --node-rank 0 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint head:29400 \\
        -m mtlrec.train --data /shared/data/big --config configs/big/mmoe.yaml --out /shared/runs/big
"""

from __future__ import annotations

import typer

from mtlrec.cli.train import train_cmd


def main() -> None:
    """Run ``mtlrec train`` with this process's arguments."""
    typer.run(train_cmd)


if __name__ == "__main__":
    main()
