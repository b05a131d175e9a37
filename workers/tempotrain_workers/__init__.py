"""TempoTrain workers: the API contract, Temporal workflows and activities."""
