"""Export a PyTorch model for lth (`model = { torchscript = "net.pt" }` in a sweep file).

    import torch, lth_export
    lth_export.export(MyNet(num_classes=10), "mynet.pt")

What it does, and why:
- Buffers (batch-norm running statistics, `num_batches_tracked`) become parameters that do not
  require grad. libtorch's C API gives a worker no access to a TorchScript module's buffers, but
  it lists parameters; lth trains the parameters that require grad and carries the others as state
  (checkpoints, the rewind point θk), exactly as PyTorch carries buffers. Batch norm still updates
  them in place in training mode.
- The model is compiled with `torch.jit.script` (or traced when scripting fails and an
  `example_input` is given) in training mode, and saved with `torch.jit.save`.

Parameter names are the model's own (`features.0.weight`, `fc.bias`); they name the layers in
every mask and per-layer result. Keep the model in float32: the worker handles reduced precision
with autocast on CUDA.
"""

import torch
from torch import nn


def buffers_to_parameters(model: nn.Module) -> nn.Module:
    """Turns every buffer of `model` into a parameter with requires_grad=False, in place."""
    for module in model.modules():
        for name, buf in list(module.named_buffers(recurse=False)):
            if buf is None:
                continue
            delattr(module, name)
            module.register_parameter(name, nn.Parameter(buf, requires_grad=False))
    return model


def export(model: nn.Module, path: str, example_input: torch.Tensor = None) -> torch.jit.ScriptModule:
    """Saves `model` as TorchScript at `path` in the form lth trains (see the module docstring)."""
    model = buffers_to_parameters(model.float().cpu()).train()
    try:
        scripted = torch.jit.script(model)
    except Exception:
        if example_input is None:
            raise
        scripted = torch.jit.trace(model, example_input)
    torch.jit.save(scripted, path)
    return scripted
