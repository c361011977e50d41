"""Built-in plugins of runner, registered through the `runner` entry-point group like any third party's."""
