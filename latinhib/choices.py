"""Allowed values of the config's choice keys, shared by the config validator, the CLI's
``click.Choice`` options and the modules that act on them. No imports: the CLI builds
its options (and ``--help``) from these without importing torch."""

#: Loss targets (SPEC step 1). ``auto`` becomes ``label`` when labels are given, else ``pred``.
TARGETS = ("auto", "label", "pred", "entropy")
#: What IoN is taken of (SPEC step 3): the paper's gradient dL/dx, or gradient x
#: activation, x * dL/dx (the first-order estimate of what zeroing x would change).
IMPORTANCE_KINDS = ("gradient", "gradient_x_activation")
#: Filters for step 4: the paper's Mexican hat, and two controls (SPEC "Traps").
FILTERS = ("log", "gaussian", "none")
#: What the kept region's outline follows: the filter's response (the paper's), or the
#: unfiltered importance gated by that response (``inhibition.gate_by_response``).
OUTLINES = ("response", "importance")
