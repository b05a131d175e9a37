"""The local TempoTrain platform: a real Kubernetes control plane and Temporal, no Docker."""
