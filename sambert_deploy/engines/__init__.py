"""TensorRT engines for a bundle (build side): profiles derived from the graph specs, the strongly typed
builder, sidecars. The runtime side (loading, checks, the backend) is ``runtime.backends.sidecar`` and
``runtime.backends.tensorrt``."""
