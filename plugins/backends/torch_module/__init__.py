"""A person's own ``torch.nn.Module``, named by ``model.class_path``: the ``torch`` backend
hands such a model section to ``ModuleBackend`` (``TorchBackend.for_model``)."""
