"""The composition root: the ``xai`` command, the process supervisor, the embedded Redis launcher and logging.

It sits above every other package (it starts the gateway, the workers and the training code) and
nothing imports it back.
"""
