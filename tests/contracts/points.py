"""Contract fixtures of the synthetic self-check task (configs/task/points.yaml): its data are generated in memory."""

from tests.contracts import Contract

CONTRACT = Contract(task="points", package="equivrepro.testing", write_data=lambda tmp: [], shrink=["data.n_train=16", "data.n_heldout=8"])
