"""ncs: neuron-connection level sharing (NCS4CVR) for CTR + CVR multi-task learning.

Data readers and the synthetic generator (ncs.data), the three models (ncs.models), the
three-stage trainer (ncs.train) and the `ncs` command line (ncs.cli), all built on the layers
and ops of ncs_kernels.
"""
__version__ = "0.1.0"
