"""Timeouts of the flows' tasks: long enough for their work, short enough that a hung call surfaces.

A task that passes its timeout fails (Prefect's TimeoutError) and its flow run
shows why; claimed images come back when their lease expires. Figures are
per call, for a batch of up to 64 images on a CPU worker (the slow case):

- PREPARE: claim + read + decode a batch; reads run 8 at a time, each capped by
  CLASP_HTTP_TIMEOUT_S (20 s): 64 images -> 8 rounds x 20 s = 160 s at worst.
- LOAD_MODEL: building the Segmenter once per process (weights from disk).
- SEGMENT: the engine on one batch; on CPU the pixel variant takes up to ~30 s
  for a large image: 64 x 30 s = 1920 s.
- STORE: one transaction of masks and diagnostics (+ overlays).
- BOOKKEEPING: opening/closing a run row, counting statuses.
"""

PREPARE = 600
LOAD_MODEL = 900
SEGMENT = 2400
STORE = 600
BOOKKEEPING = 120
