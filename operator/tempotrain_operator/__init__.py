"""The TempoTrain operator: kopf handlers reconciling tempotrain.dev custom resources."""
