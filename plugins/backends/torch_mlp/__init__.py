"""The ``torch`` backend: the MLP family of the NumPy backend, trained with PyTorch on CPU or GPU.

Registered through the ``runner`` entry-point group (``torch = "runner.plugins.backends.torch_mlp"``).
PyTorch is an optional extra (``pip install 'panda-caviar[torch]'``): without it the backend is
registered as unavailable, so ``runner plugins`` says how to install it and an experiment
asking for it stops with that message before anything runs.
"""

from runner import hookimpl
from runner.plugins.backends.torch_mlp.lazy import available

INSTALL = "needs PyTorch: pip install 'panda-caviar[torch]' (or pip install torch)"


@hookimpl
def runner_register(registry) -> None:
    """Called once per run by the plugin manager: adds the ``torch`` backend, or names it
    unavailable when PyTorch cannot be imported."""
    if not available("torch"):
        registry.add_unavailable("backend", "torch", INSTALL)
        return
    from runner.plugins.backends.torch_mlp.backend import TorchBackend  # torch itself loads when a trial uses it

    registry.add_backend(TorchBackend)
