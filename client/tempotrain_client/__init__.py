"""`tempotrain`: submit, follow and plot TempoTrain experiments from Python or a shell.

from tempotrain_client import TempoTrain
tt = TempoTrain(namespace="ml")
tt.submit("examples/bert-sweep-local.yaml")
tt.wait("sweep")
tt.plot("sweep", "sweep.png")
"""

from tempotrain_client.client import Experiment, TempoTrain

__all__ = ["Experiment", "TempoTrain"]
