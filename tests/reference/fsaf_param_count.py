"""Parameter count of an FSAF configuration by per-layer arithmetic.

Independent of the model code: written from the paper's layer list (the README's
network description) and the official IBN-Net bottleneck, never from the model's
parameter tree.
"""

# ECA kernel sizes of the ResNet-50 channel counts (the ECA-Net rule, k = 3/5/5/5/7).
ECA_KERNEL = {64: 3, 256: 5, 512: 5, 1024: 5, 2048: 7}


def fsaf_param_count(
  *,
  num_classes: int,
  image_size=(256, 128),
  stage_sizes=(3, 4, 6, 3),
  stem_width=64,
  widths=(64, 128, 256, 512),
  mhsa_stages=(4, 5),
  num_heads=4,
  last_stride=2,
  eca_placement="stage",
  fusion="concat",
) -> int:
  """Trainable parameters (params collection; batch statistics excluded)."""
  h, w = image_size[0] // 4, image_size[1] // 4  # after the 7x7/2 conv and 3x3/2 max-pool
  n = 7 * 7 * 3 * stem_width + 2 * stem_width  # conv1 + bn1 (scale, bias)
  if eca_placement == "stage":
    n += ECA_KERNEL[stem_width]
  inplanes = stem_width
  strides = (1, 2, 2, last_stride)
  for stage, (num_blocks, planes, first_stride) in enumerate(
    zip(stage_sizes, widths, strides, strict=True), start=2
  ):
    out = 4 * planes
    for i in range(num_blocks):
      stride = first_stride if i == 0 else 1
      n += inplanes * planes + 2 * planes  # conv1; bn1 (IBN: IN half + BN half = same)
      if stage in mhsa_stages:
        d = planes // num_heads
        n += 3 * planes * planes + (2 * h - 1) * d + (2 * w - 1) * d  # q, k, v, rel_h, rel_w
      else:
        n += 3 * 3 * planes * planes  # conv2
      n += 2 * planes + planes * out + 2 * out  # bn2, conv3, bn3
      if stride != 1 or inplanes != out:
        n += inplanes * out + 2 * out  # downsample conv + BN
      if eca_placement == "block":
        n += ECA_KERNEL[out]
      h, w = h // stride, w // stride
      inplanes = out
    if eca_placement == "stage":
      n += ECA_KERNEL[out]
  dim = 4 * widths[3] + (4 * widths[1] + 4 * widths[2] if fusion == "concat" else 0)
  n += dim  # BNNeck scale (no shift)
  n += dim * num_classes  # classifier, no bias
  return n
