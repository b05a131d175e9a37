"""CIFAR-10 data-parallel training on Ray Train (DESIGN.md §5).

`driver` and `layout` import no ML library at module level (the worker imports them);
`data`, `models` and `train_loop` import torch and ray and run in the driver and Ray workers.
"""
