"""The neutral core every layer may use: device mesh, multi-process start, checkpoint
integrity and inference restore, config JSON, the host allocator, the user-error family
(`errors`) and the command-line runner of every entry (`cli`)."""
