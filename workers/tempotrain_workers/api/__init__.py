"""The one contract shared by the operator, the workflows and the tests (DESIGN.md §2).

`contract`: BERT workflow and activity inputs/results, status updates, queue names, id helpers.
`scaling`: the CIFAR-10 Ray scaling workflow's inputs/results.
`resources`, `scaling_resources`: the custom resources' spec and status models, from which
the CRDs are generated. Pydantic only: no ML imports, no I/O.
"""

from tempotrain_workers.api.base import *  # noqa: F403
from tempotrain_workers.api.contract import *  # noqa: F403
from tempotrain_workers.api.inference import *  # noqa: F403
from tempotrain_workers.api.inference_resources import *  # noqa: F403
from tempotrain_workers.api.pod_settings import *  # noqa: F403
from tempotrain_workers.api.resources import *  # noqa: F403
from tempotrain_workers.api.scaling import *  # noqa: F403
from tempotrain_workers.api.scaling_resources import *  # noqa: F403
from tempotrain_workers.api.sweep import *  # noqa: F403
