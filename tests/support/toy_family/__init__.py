"""A toy model family for tests/test_new_family.py: the three files a new family adds (``families/toy.py``,
``diffusers/toy.py``, ``comfy/toy.py``, each dropped into its package by appending its folder to the package's
``__path__``, the way the registries discover plug-ins) and a toy model to run them on (``model.py``)."""
