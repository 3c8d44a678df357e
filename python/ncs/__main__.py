"""`python -m ncs ...` and `torchrun --nproc_per_node N -m ncs train --config C --out O`."""
import sys

from ncs.cli import main

if __name__ == "__main__":
    sys.exit(main())
