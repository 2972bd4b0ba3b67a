"""NVIDIA Triton serving: a decoupled Python-backend model over the streaming runtime (docs/triton.md).

* :mod:`.protocol` - the model's inputs, outputs and parameters as data, and the conversions both sides use;
* :mod:`.repo` - ``sambert-deploy triton-repo``: bundle -> model repository (config.pbtxt + model.py);
* :mod:`.model` - the model file Triton runs (imports ``triton_python_backend_utils``: only inside Triton);
* :mod:`.client` - ``sambert-deploy triton-client``: the gRPC streaming client (the ``triton`` extra);
* :mod:`.local` - a real tritonserver from the nvidia-pytriton wheel, for tests and the benchmark.

Nothing is imported here, so importing a submodule stays as light as that submodule.
"""
