"""RQ worker processes: job entry points, the model cache, explainers, metrics and rendering."""
