"""Classes of a step's profile: XLA CPU instructions from the compiled HLO, PyTorch ops
from `torch.profiler`, and the rows on which `benchmarks/profile_step.py` compares them.

JAX side: `parse_entry` reads the ENTRY instructions (and the opcodes inside each
fusion) of a compiled step's HLO text; `classify` names each one 'matmul fwd' /
'matmul dX' / 'matmul dW' (convolutions, dots and library fusions containing them, told
apart by `op_name` metadata and result shape), 'elementwise fusion', 'reduce / pool',
... . PyTorch side: `TORCH_CLASSES` names the aten ops. `compared_class` maps both onto
`COMPARED`, the rows of the side-by-side table.
"""

import re

_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%(\S+) = (\S+?) ([a-z][\w-]*)\(")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_MATMUL = ("convolution", "dot")
_LIBRARY = ("__ynn_fusion", "__xnn_fusion", "__onednn_fusion")


def parse_entry(hlo_text: str) -> dict[str, dict]:
  """Instructions of the ENTRY computation (+ the opcodes inside each fusion).

  Returns:
    {name: {'shape', 'opcode', 'op_name', 'library', 'body_ops'}}.
  """
  computations, current, entry = {}, None, None
  for line in hlo_text.splitlines():
    if line and not line.startswith(" ") and "{" in line and not line.startswith("}"):
      current = line.split()[1] if line.startswith("ENTRY") else line.split()[0]
      current = current.lstrip("%")
      if line.startswith("ENTRY"):
        entry = current
      computations[current] = []
    elif current is not None and (m := _INSTRUCTION.match(line)):
      computations[current].append((m.group(1), m.group(2), m.group(3), line))
  body_ops = {name: {op for _, _, op, _ in insts} for name, insts in computations.items()}
  result = {}
  for name, shape, opcode, line in computations.get(entry, []):
    calls = re.search(r"calls=%([\w.-]+)", line)
    m = _OP_NAME.search(line)
    result[name] = {
      "shape": shape,
      "opcode": opcode,
      "op_name": m.group(1) if m else "",
      "library": next((lib for lib in _LIBRARY if lib in line), ""),
      "body_ops": body_ops.get(calls.group(1), set()) if calls else set(),
    }
  return result


def _dims(shape: str) -> list[int]:
  m = re.search(r"\[([\d,]*)\]", shape)
  return [int(d) for d in m.group(1).split(",") if d] if m else []


def classify(info: dict, kernel_shapes: set[tuple[int, ...]]) -> str:
  """Class of one instruction: 'matmul fwd' / 'matmul dX' / 'matmul dW', ... .

  Args:
    info: an entry of `parse_entry`.
    kernel_shapes: sorted dims of every parameter (and of its [prod(dims[:-1]),
      dims[-1]] matrix): a matmul whose result has such a shape (in any dimension
      order) is a weight gradient.
  """
  ops = info["body_ops"] | {info["opcode"]}
  op_name = info["op_name"]
  if ops & set(_MATMUL):
    if tuple(sorted(_dims(info["shape"]))) in kernel_shapes:
      return "matmul dW"
    if "transpose(" in op_name:
      return "matmul dX"
    if "/mhsa/" in op_name and "conv_general" not in op_name:
      return "attention matmul fwd"
    return "matmul fwd" if op_name else "matmul (no op_name)"
  if info["library"]:
    return "library fusion (no matmul)"
  if ops & {"reduce", "reduce-window"}:
    return "reduce / pool"
  if info["opcode"] in ("copy", "transpose") or ops <= {
    "copy",
    "transpose",
    "bitcast",
    "parameter",
  }:
    return "copy / transpose"
  if info["opcode"] == "fusion":
    return "elementwise fusion"
  return f"other ({info['opcode']})"


# PyTorch ops (`torch.profiler` self times) by the classes of the comparison table.
TORCH_CLASSES = {
  "aten::mkldnn_convolution": "matmul fwd",
  "aten::convolution_backward": "matmul dX + dW",
  "aten::mm": "dense matmul (fwd + grads)",
  "aten::addmm": "dense matmul (fwd + grads)",
  "aten::bmm": "dense matmul (fwd + grads)",
  "aten::native_batch_norm": "batch / instance norm",
  "aten::native_batch_norm_backward": "batch / instance norm",
}
COMPARED = ("matmul fwd", "matmul dX + dW", "dense matmul (fwd + grads)", "everything else")


def compared_class(cls: str) -> str:
  """The row of the JAX / PyTorch table for a class of `classify` or of `TORCH_CLASSES`.

  XLA's dense layers (classifier, attention) are not told apart from the convolutions,
  so their time stays in the matmul rows; everything that is not a matmul (norms,
  activations, pooling, the optimiser, copies) is one row, as XLA fuses them together.
  """
  if cls in ("matmul dX", "matmul dW", "matmul dX + dW"):
    return "matmul dX + dW"
  if cls in ("matmul fwd", "attention matmul fwd", "matmul (no op_name)"):
    return "matmul fwd"
  if cls == "dense matmul (fwd + grads)":
    return cls
  return "everything else"


def torch_by_class(self_times: dict[str, float]) -> dict[str, float]:
  """Seconds per row of `COMPARED` from `{aten op: self seconds}` of one PyTorch step."""
  rows = dict.fromkeys(COMPARED, 0.0)
  for op, seconds in self_times.items():
    rows[compared_class(TORCH_CLASSES.get(op, "other"))] += seconds
  return rows
