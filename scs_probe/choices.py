"""The names a user chooses from (devices, the data folder's environment variable, the default model, the seeds'
range), in a module that imports nothing heavy: the command line builds its help and usage errors from them without
torch."""

DEVICES = ("auto", "cpu", "cuda", "mps")
DATA_ENV = "SCS_PROBE_DATA"
DEFAULT_ARCH = "rohrer100k"  # the headline model: SCS, no activation, MaxAbsPool2d
SEED_MAX = 2**32 - 1  # seeds (and indices) as numpy and every generator take them
WORKERS_MAX = 256  # DataLoader worker processes: more is a typo, or a crafted run record forking the machine away
