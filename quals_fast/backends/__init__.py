"""Model runtimes behind one small protocol (see base.Backend)."""
from quals_fast.backends.base import Backend, ModelSpec

BACKENDS = ("torch", "onnx")


def load_backend(name, model_dir, device="cpu", **kwargs):
    if name == "torch":
        from quals_fast.backends.torch_backend import TorchBackend

        return TorchBackend(model_dir, device=device, **kwargs)
    if name == "onnx":
        from quals_fast.backends.onnx_backend import OnnxBackend

        return OnnxBackend(model_dir, device=device, **kwargs)
    raise ValueError("unknown backend %r; choose one of: %s" % (name, ", ".join(BACKENDS)))


__all__ = ["Backend", "ModelSpec", "BACKENDS", "load_backend"]
