"""The ``numpy`` backend: a from-scratch NumPy multilayer perceptron.

Registered through the ``runner`` entry-point group (``numpy = "runner.plugins.backends.numpy_mlp"``).
Modules: ``network`` (forward, backward, loss), ``optimizers`` (gd, momentum, rmsprop, adam),
and ``backend`` (``NumpyBackend``); the config sections, the data order and the
learning-rate schedule are the MLP family's (``runner.plugins.backends.mlp_family``,
``runner.plugins.backends.schedules``).
"""

from runner import hookimpl
from runner.plugins.backends.numpy_mlp.backend import Model, NumpyBackend, Options, Train


@hookimpl
def runner_register(registry) -> None:
    """Called once per run by the plugin manager: adds the ``numpy`` backend."""
    registry.add_backend(NumpyBackend)


__all__ = ["Model", "NumpyBackend", "Options", "Train", "runner_register"]
