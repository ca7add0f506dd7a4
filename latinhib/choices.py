"""Allowed values of the config's choice keys and of the CLI's own choices (formats,
``--grid`` keys), shared by the config validator, the CLI's ``click.Choice`` options and
help, and the modules that act on them. No imports: the CLI builds its options (and
``--help``) from these without importing torch."""

#: Loss targets (SPEC step 1). ``auto`` becomes ``label`` when labels are given, else ``pred``.
TARGETS = ("auto", "label", "pred", "entropy")
#: What IoN is taken of (SPEC step 3): the paper's gradient dL/dx, or gradient x
#: activation, x * dL/dx (the first-order estimate of what zeroing x would change), or
#: gradcam_plus_plus: no p-norm, the activations weighted per channel by Grad-CAM++'s
#: positive-gradient weights (``importance.gradcam_plus_plus_map``; issue 26).
IMPORTANCE_KINDS = ("gradient", "gradient_x_activation", "gradcam_plus_plus")
#: Filters for step 4: the paper's Mexican hat, and two controls (SPEC "Traps").
FILTERS = ("log", "gaussian", "none")
#: What the kept region's outline follows: the filter's response (the paper's), or the
#: unfiltered importance gated by that response (``inhibition.gate_by_response``).
OUTLINES = ("response", "importance")
#: Where a job reads from and writes to: a folder that is mirrored, or WebDataset tar shards.
FORMATS = ("folder", "webdataset")
#: ``--input-format``: one of :data:`FORMATS`, or ``auto`` (tar shards are told apart by name).
INPUT_FORMATS = ("auto",) + FORMATS
#: ``preview --grid`` names -> config keys. All act after the model pass (steps 4-8):
#: ``preview.grid_table`` runs the model once and recombines its layer maps per column.
GRID_KEYS = {
    "q": "inhibition.quantile",
    "quantile": "inhibition.quantile",
    "sigma": "inhibition.sigma",
    "k": "inhibition.kernel_size",
    "kernel_size": "inhibition.kernel_size",
    "blur": "blur.sigma",
    "blur_sigma": "blur.sigma",
    "filter": "inhibition.filter",
    "outline": "inhibition.outline",
}
