"""The report layer: paper figures and tables regenerated from stored results alone (no model, no GPU).

Inputs are two tidy frames from the results store: ``images`` (one row per image) and ``scores``
(one row per image and metric). ``rlg.report.report.write_report`` is the entry point.
"""
