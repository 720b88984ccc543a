"""mibench: a reproducible benchmark of model-inversion attacks and defenses.

The library is a set of small modules by concern:

- :mod:`mibench_lib.data`: the embedded ``mnist5k`` and ``digits`` datasets and loaders for real face
  datasets on local disk, all returned as a :class:`~mibench_lib.data.MISplit`.
- :mod:`mibench_lib.models`: the classifier zoo (one interface: logits plus penultimate features) and
  the single training loop :func:`~mibench_lib.models.train_classifier`.
- :mod:`mibench_lib.generators`: GAN priors trained on public data only.
- :mod:`mibench_lib.oracle`: :class:`~mibench_lib.oracle.TargetOracle`, the only way an attack reaches a
  target; it enforces the access level and counts queries.
- :mod:`mibench_lib.attacks`: one file per attack, each a function returning an
  :class:`~mibench_lib.attacks.InversionResult`.
- :mod:`mibench_lib.byo`: bring your own models: the target, generator and critic contracts, the
  adapters (``as_target``, ``as_generator``, ``as_critic``) and checks every attack runs on entry.
- :mod:`mibench_lib.metrics`: the nine MIBench metrics.
- :mod:`mibench_lib.cache`: content-addressed artifact cache (safetensors + JSON metadata + checksum).
- :mod:`mibench_lib.studies`: the papermill runner and the ``mibench`` command line.
"""

__version__ = "0.1.0"
