"""Training code: classifiers (``classifier``, image folders in ``data``, the shipped demo models in
``demo``) and the per-classifier explainer artifacts (``syce``: SyCE/CyCE generators, ``gad``: GAD
support models). Nothing is imported here, so importing one trainer does not load the others.
"""
