"""``agentrt.parallelism``: SuperScaler-style parallel plans in three phases.

1. transform operators (:meth:`Plan.partition`, :meth:`Plan.replicate`) along
   the dimensions their annotations allow;
2. place and order the sub-operators (:meth:`Plan.assign`, :meth:`Plan.order`);
3. :func:`lower` inserts the communication between producers and consumers,
   the cheapest path over layouts under a :class:`CostModel`.

See ``README.md`` in this folder for a worked example and what is torch's.
"""

from agentrt.parallelism.anno import Anno, OpView, Split, parse
from agentrt.parallelism.comm import CostModel, Program, cheapest_path, lower
from agentrt.parallelism.errors import CaptureError, ParallelError, PlanError, ScheduleError
from agentrt.parallelism.graph import Graph, Op, capture
from agentrt.parallelism.ops import register_op
from agentrt.parallelism.plan import Plan, SubOp
from agentrt.parallelism.plans import PLANS, data_parallel, follow, tensor_parallel
from agentrt.parallelism.tensor import PTensor, VTensor, covers, vtensors

__all__ = [
    "PLANS",
    "Anno",
    "CaptureError",
    "CostModel",
    "Graph",
    "Op",
    "OpView",
    "PTensor",
    "ParallelError",
    "Plan",
    "PlanError",
    "Program",
    "ScheduleError",
    "Split",
    "SubOp",
    "VTensor",
    "capture",
    "cheapest_path",
    "covers",
    "data_parallel",
    "follow",
    "lower",
    "parse",
    "register_op",
    "tensor_parallel",
    "vtensors",
]
