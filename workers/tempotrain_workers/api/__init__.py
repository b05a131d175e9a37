"""The one contract shared by the operator, the workflows and the tests (DESIGN.md §2).

`contract`: workflow and activity inputs/results, queue names, id helpers.
`resources`: the custom resources' spec and status models, from which the CRDs are generated.
Pydantic only: no ML imports, no I/O.
"""

from tempotrain_workers.api.contract import *  # noqa: F403
from tempotrain_workers.api.resources import *  # noqa: F403
