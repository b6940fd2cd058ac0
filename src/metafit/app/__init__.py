"""The metafit application: config files, run folders, the ``metafit`` command line, reports,
plots and pipelines (fusion of trained runs, folder-based prediction).

It sits ON the core (``metafit.functional``, ``metafit.data``, ``metafit.models``,
``metafit.algorithms``, ``metafit.engine``, ``metafit.callbacks``, ``metafit.evaluation``,
``metafit.checkpoint``, ...), which never imports it. The application owns the process: only
here are process-wide settings (threads, malloc, deterministic algorithms) applied.
"""
