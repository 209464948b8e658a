"""The neutral core every layer may use: device mesh, multi-process start, checkpoint
integrity and inference restore, config JSON, the host allocator."""
